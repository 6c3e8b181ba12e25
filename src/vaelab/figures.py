"""Every picture of a run, drawn from its run directory into RUN/plots/.

The loss curves and reconstructions are drawn here for every model; the rest
are the model's own (:meth:`vaelab.models.base.LatentModel.pictures`): a
VAE's samples and latent space, AIR's windows and counts.

>>> written = make_plots(vaelab.load_run("runs/demo"))
>>> sorted(written)   # names -> paths, plus what the model reports (a VAE: "num_active_units")
"""

from pathlib import Path

import torch

from vaelab import data, plots
from vaelab.models import MODELS
from vaelab.models.base import PictureView, evaluating
from vaelab.records import read_evaluation

# The pictures of a VAE run (the manifold only for a 2-D latent) and of an AIR run.
PLOT_NAMES = tuple(MODELS["vae"].picture_captions())
AIR_PLOT_NAMES = tuple(MODELS["air"].picture_captions())


def _merged(orders) -> tuple:
    """Returns the names of several orders in one order that keeps each one's (where they agree)."""
    merged = []
    for order in orders:
        at = 0
        for name in order:
            if name in merged:
                at = merged.index(name) + 1
            else:
                merged.insert(at, name)
                at += 1
    return tuple(merged)


# Every picture any run can have, in an order that keeps each model's report order.
ALL_PLOT_NAMES = _merged(MODELS[model].picture_captions() for model in MODELS)


def make_plots(run, out_dir=None, tsne_points=2000, echo=print) -> dict:
    """Draws every picture of `run` into `out_dir` (default RUN/plots); returns name -> path.

    The names come in the report's order, followed by whatever the model
    reports of its pictures (a VAE: "num_active_units", the number of active
    latent dimensions).
    """
    out = Path(out_dir or Path(run.dir) / "plots")
    model, config = run.model, run.config
    device = next(model.parameters()).device
    images = data.evaluation_split(config.dataset, "test", config.binarize, device, config.data_dir)
    shape = images.image_shape
    pick = torch.randperm(len(images), generator=torch.Generator().manual_seed(config.seed))
    written = {}

    def path(name):
        written[name] = out / f"{name}.png"
        return written[name]

    eval_path = Path(run.dir) / "eval.json"
    view = PictureView(
        images=images,
        pick=pick,
        seed=config.seed,
        title=Path(run.dir).name,
        metrics=run.metrics,
        evaluation=read_evaluation(eval_path, default={}),
        path=path,
        tsne_points=tsne_points,
        echo=echo,
    )
    if run.metrics:
        plots.elbo_curves(run.metrics, path("elbo_curves"), f"ELBO per epoch: {view.title}")
    with evaluating(model):
        batch = images.batch(pick[:12].to(device))
        plots.reconstructions(
            batch.x.reshape(-1, *shape).cpu().numpy(),
            model.reconstruct(batch).reshape(-1, *shape).cpu().numpy(),
            path("reconstructions"),
        )
        facts = model.pictures(view)
    ordered = {name: written[name] for name in model.picture_captions() if name in written}
    return {**ordered, **facts}
