"""A worker that prints progress, then fails with a Python exception (exit status 1)."""

print("epoch 1: loss 0.93", flush=True)
print("epoch 2: loss 4.1e+07", flush=True)
raise ValueError("loss diverged to inf at epoch 3 (learning rate 5.0)")
