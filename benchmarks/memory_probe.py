"""Resident-memory timeline of NFNet-F0 training (docs/performance.md).

    python benchmarks/memory_probe.py [--remat] [--plain] [--noagc] [--jit]
                                      [--lean]

Samples /proc/self/statm every 2 ms and prints the RSS after import, build,
compile and each of three train steps, with the live-tensor bytes of
TensorFlow's CPU allocator (current / peak of the step; not available with
--lean) (--plain: SGD without momentum; --noagc: no adaptive gradient
clipping; --lean: keras_nfnets.use_lean_cpu_allocator(); TICK=1: also every
2 s; B=batch). `benchmarks/live_tensors.py` lists the tensors live at the
peak.
"""
import os, sys, time, threading, resource
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL","3")
T0=time.time()
def rss():
    with open("/proc/self/statm") as f: return int(f.read().split()[1])*4096/1e9
peak=[0.0]
def sampler():
    while True:
        r=rss()
        if r>peak[0]: peak[0]=r
        time.sleep(0.002)
threading.Thread(target=sampler,daemon=True).start()
def ticker():
    while True:
        time.sleep(2); print(f"   tick {time.time()-T0:6.1f}s rss {rss():.2f}", flush=True)
if os.environ.get("TICK"): threading.Thread(target=ticker,daemon=True).start()
def tensors():
    try:
        import tensorflow as tf
        info = tf.config.experimental.get_memory_info("CPU:0")
        tf.config.experimental.reset_memory_stats("CPU:0")
        return f" tensors {info['current']/1e9:.2f} (peak {info['peak']/1e9:.2f})"
    except Exception:  # no statistics (lean allocator, oneDNN off)
        return ""
def mark(name):
    print(f"{time.time()-T0:6.1f}s {name:28s} rss {rss():.2f} phase-peak {peak[0]:.2f} maxrss {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1e6:.2f}{tensors()}", flush=True)
    peak[0]=0
import numpy as np, keras, keras_nfnets
if "--lean" in sys.argv:
    keras_nfnets.use_lean_cpu_allocator()
mark("import")
remat = "--remat" in sys.argv  # off unless asked (the model default is "auto")
b=int(os.environ.get("B","8"))
model=keras_nfnets.NFNet("F0",weights=None,input_shape=(192,192,3),classifier_activation=None,remat=remat)
mark("build")
opt = keras.optimizers.SGD(0.1, momentum=0.9, nesterov=True) if "--plain" not in sys.argv else keras.optimizers.SGD(0.1)
if "--nfnet_sgd" in sys.argv:  # the package optimizer (DeepMind SGD)
    opt = keras_nfnets.NFNetSGD(0.1, momentum=0.9, nesterov=True)
model.compile(optimizer=opt, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile="--jit" in sys.argv, agc_clipping=None if "--noagc" in sys.argv else 0.01)
rng=np.random.default_rng(0)
x=rng.uniform(0,255,(b,192,192,3)).astype("float32"); y=rng.integers(0,1000,(b,))
mark("compile")
tf_fn = None
for i in range(3):
    t=time.time(); model.train_on_batch(x,y); mark(f"step{i} {time.time()-t:.2f}s")
