"""Pyro's ss_vae_M2 schedule, step for step, on vaelab's hand-written M2 (torch backend).

    python benchmarks/m2_pyro_schedule.py --seed 0 --epochs 30 --out FILE.jsonl [--no-echo] [--b1 0.95]

What Pyro's example does, read from its source (examples/vae/ss_vae_M2.py and
utils/mnist_cached.py), and what `vaelab train --model m2` does not:

- 50,000 training images (the last 10,000 of MNIST's training set are its
  validation set); 100 labelled, 10 a class;
- an epoch is 250 unlabelled batches of 200 and ONE labelled batch of 100, at
  position 1 (`periodic_interval_batches = int(50000 / 100)` puts only one in
  an epoch's 251 batches);
- every batch takes two steps of the one Adam (betas (b1, 0.999), its example
  command's b1 0.95): `SVI(TraceEnum_ELBO).step`, then `SVI(model_classify).step`,
  the α = 46 classification loss. On an unlabelled batch that second step has
  no loss, yet Pyro's `zero_grads` leaves zero tensors (not None), so Adam
  still steps every parameter on its momentum: an "echo" step (`--no-echo`
  drops it);
- the KL is taken at the draws (TraceEnum_ELBO), not in closed form.

Each epoch's line: train ELBO of the unlabelled images, validation and test
accuracy of q(y|x), and Pyro's reported number, the test accuracy at the best
validation epoch.
"""

import argparse
import json
import time

import torch

from vaelab.data import training_and_test
from vaelab.data.batches import Batch
from vaelab.models.m2 import M2

p = argparse.ArgumentParser()
p.add_argument("--seed", type=int, default=0)
p.add_argument("--epochs", type=int, default=50)
p.add_argument("--b1", type=float, default=0.95)
p.add_argument("--no-echo", action="store_true")
p.add_argument("--combined", action="store_true", help="aux in the same step as the labelled ELBO")
p.add_argument("--out", required=True)
a = p.parse_args()
torch.manual_seed(a.seed)
torch.set_num_threads(1)
train, test = training_and_test("mnist")
x_all = train.pixels.float() / 255
y_all = train.labels
x_tr, y_tr = x_all[:50000], y_all[:50000]
x_va, y_va = x_all[50000:], y_all[50000:]
x_te, y_te = test.pixels.float() / 255, test.labels
g = torch.Generator().manual_seed(a.seed)
sup = torch.cat(
    [
        torch.nonzero(y_tr == c).flatten()[torch.randperm(int((y_tr == c).sum()), generator=g)[:10]]
        for c in range(10)
    ]
)
mask = torch.ones(50000, dtype=torch.bool)
mask[sup] = False
unsup = torch.nonzero(mask).flatten()
m = M2(784, 10, 50, (500,), "softplus", aux_weight=46.0)
params = list(m.parameters())
opt = torch.optim.Adam(params, lr=4.2e-4, betas=(a.b1, 0.999))


def acc(x, y):
    with torch.no_grad():
        return sum(
            (m.classify(x[i : i + 1000]) == y[i : i + 1000]).sum().item() for i in range(0, len(x), 1000)
        ) / len(x)


def step(loss):
    for q in params:
        if q.grad is not None:
            q.grad.zero_()
    if loss is not None:
        loss.backward()
    opt.step()


log = open(a.out, "w")
best_va, test_at_best = 0, 0
for epoch in range(1, a.epochs + 1):
    t0 = time.time()
    perm = unsup[torch.randperm(len(unsup))]
    ub = list(perm.split(200))
    sb = sup[torch.randperm(len(sup))]
    batches = [("u", ub[0]), ("s", sb)] + [("u", b) for b in ub[1:]]
    tot = 0.0
    for kind, idx in batches:
        if kind == "u":
            b = Batch(x_tr[idx], torch.full((len(idx),), -1))
            elbo, _ = m._parts(b, analytic_kl=False)
            step(-elbo.sum())
            tot += elbo.sum().item()
            if not a.no_echo:
                step(None)
        else:
            b = Batch(x_tr[idx], y_tr[idx])
            elbo, aux = m._parts(b, analytic_kl=False, with_aux=True)
            if a.combined:
                step(-elbo.sum() - 46.0 * aux)
            else:
                step(-elbo.sum())
                step(-46.0 * m._parts(b, analytic_kl=False, with_aux=True)[1])
    va, te = acc(x_va, y_va), acc(x_te, y_te)
    if va > best_va:
        best_va, test_at_best = va, te
    rec = dict(
        epoch=epoch,
        train_elbo=tot / len(unsup),
        valid=va,
        test=te,
        best_valid=best_va,
        test_at_best=test_at_best,
        seconds=time.time() - t0,
    )
    print(json.dumps(rec), file=log, flush=True)
