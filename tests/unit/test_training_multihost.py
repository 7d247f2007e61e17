"""training.multihost's checks that need no second process: the
coordinator port claim, the flag checks and the lost-process message (the
runs with several processes are in tests/integration/test_multihost_jax.py)."""

import socket
import types

import pytest

from training import multihost
from training_helpers import free_ports


@pytest.fixture
def claimed():
    yield
    while multihost._PORT_LOCK:  # pylint: disable=protected-access
        multihost._PORT_LOCK.pop().close()  # pylint: disable=protected-access


def test_a_port_another_program_listens_on_is_named(claimed):
    del claimed
    port = free_ports(1)[0]
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", port))
        listener.listen()
        with pytest.raises(multihost.SetupError,
                           match=f"port {port} is already in use on this "
                           "host"):
            multihost._claim_coordinator_port(f"127.0.0.1:{port}")  # pylint: disable=protected-access
    assert multihost._port_in_use(port) is None  # pylint: disable=protected-access


def test_a_second_process_0_on_the_same_port_is_refused(claimed):
    del claimed
    port = free_ports(1)[0]
    multihost._claim_coordinator_port(f"127.0.0.1:{port}")  # pylint: disable=protected-access
    with pytest.raises(multihost.SetupError) as e:
        multihost._claim_coordinator_port(f"127.0.0.1:{port}")  # pylint: disable=protected-access
    assert "Two processes were given --process_id=0" in str(e.value)
    assert f"already runs a JAX coordinator on port {port}" in str(e.value)


def _values(**kw):
    base = dict(num_processes=2, process_id=0, distributed_timeout=300,
                distributed_heartbeat_timeout=30, coordinator_address=None,
                model_dir=None)
    base.update(kw)
    return types.SimpleNamespace(**base)


def test_heartbeat_timeout_is_checked():
    with pytest.raises(multihost.SetupError,
                       match="--distributed_heartbeat_timeout=1: must be"):
        multihost.check_flag_values(_values(distributed_heartbeat_timeout=1))


def test_the_lost_process_message_names_it_and_the_backup(tmp_path):
    values = _values(model_dir=str(tmp_path))
    text = multihost.lost_process_message([0], "gone", values, 1, 2)
    assert text.startswith("error: process 0 (the coordinator) of 2 stopped")
    assert f"no backup was written yet in {tmp_path / 'backup'}" in text
