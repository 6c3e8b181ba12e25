"""The latent explorer: RUN/explore.html, one offline page that runs the decoder in the browser.

``vaelab explore RUN`` writes a single HTML file (no network fetch, opens from
disk) that carries the decoder's weights and a forward pass in plain
JavaScript, so the picture answers as the user moves:

- a map of test images in latent space, coloured by label: the latent itself
  when it has two dimensions, else the first two principal components of the
  posterior means; hovering a point shows its image, clicking sets the
  current latent to its posterior mean (and the label to its own);
- sliders for the most active latent dimensions (largest variance of the
  posterior means over the mapped images), the decoded image redrawn on
  every move, and the decode time measured in the page and printed on it;
- an interpolation strip between two latents chosen as A and B;
- for a conditional model (cvae, m2), a label picker fed to the decoder.

The decoder is exported layer by layer (:func:`export_decoder`): Linear,
the activations vaelab builds networks from, and for ``--net conv`` the
reshape, transposed convolutions and crop. The page computes in double
precision from the float32 weights; a browser test holds its images to
PyTorch's within 1e-4.

Models: those with one Gaussian latent and a ``decode(z, y)`` (vae, beta-vae,
cvae, m2, vampprior); others are refused in one line.
"""

import base64
import html
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vaelab import data
from vaelab.errors import ConfigError
from vaelab.fileio import write_bytes
from vaelab.models.base import evaluating
from vaelab.models.cvae import CVAE
from vaelab.models.vae import VAE
from vaelab.nets import BernoulliDecoder, ConvDecoder

PAGE = "explore.html"
MAX_SLIDERS = 8
STRIP = 10  # images in the interpolation strip
_ACTIVATIONS = {
    nn.ReLU: "relu",
    nn.Softplus: "softplus",
    nn.Tanh: "tanh",
    nn.ELU: "elu",
    nn.LeakyReLU: "leaky_relu",
}


def _floats(tensor: torch.Tensor) -> str:
    """A tensor's values as base64 of little-endian float32."""
    return base64.b64encode(
        tensor.detach().cpu().to(torch.float32).contiguous().numpy().astype("<f4")
    ).decode()


def _layers(module: nn.Module) -> list:
    """Flattens `module` (Sequentials of Linear and activations) into the page's layer list."""
    if isinstance(module, nn.Sequential):
        return [layer for child in module for layer in _layers(child)]
    if isinstance(module, nn.Linear):
        return [{"op": "linear", "in": module.in_features, "out": module.out_features,
                 "weight": _floats(module.weight), "bias": _floats(module.bias)}]  # fmt: skip
    kind = _ACTIVATIONS.get(type(module))
    if kind is None:
        raise ConfigError(f"vaelab explore cannot run a {type(module).__name__} layer in the browser")
    layer = {"op": kind}
    if isinstance(module, nn.Softplus):
        layer.update(beta=module.beta, threshold=module.threshold)
    elif isinstance(module, nn.ELU):
        layer.update(alpha=module.alpha)
    elif isinstance(module, nn.LeakyReLU):
        layer.update(slope=module.negative_slope)
    return [layer]


def export_decoder(decoder: nn.Module) -> list:
    """Returns the decoder as the page's layers: its input (z, then y one-hot) to logits (H*W)."""
    if isinstance(decoder, BernoulliDecoder):
        return _layers(decoder.body) + _layers(decoder.logits)
    if isinstance(decoder, ConvDecoder):
        layers = _layers(decoder.body) + [{"op": "reshape", "shape": list(decoder.start)}]
        for module in decoder.deconvs:
            if isinstance(module, nn.ConvTranspose2d):
                if module.groups != 1 or module.dilation != (1, 1) or module.output_padding != (0, 0):
                    raise ConfigError("vaelab explore runs plain transposed convolutions only")
                layers.append({
                    "op": "conv_transpose", "in": module.in_channels, "out": module.out_channels,
                    "kernel": list(module.kernel_size), "stride": list(module.stride),
                    "padding": list(module.padding), "weight": _floats(module.weight), "bias": _floats(module.bias),
                })  # fmt: skip
            else:
                layers += _layers(module)
        return layers + [{"op": "crop", "shape": list(decoder.image_shape)}]
    raise ConfigError(f"vaelab explore cannot run a {type(decoder).__name__} decoder in the browser")


def check_model(model, name: str) -> None:
    if not isinstance(model, VAE):
        raise ConfigError(
            f"vaelab explore needs a model with one Gaussian latent and a decoder (vae, beta-vae, cvae, m2, "
            f"vampprior); {name} has not"
        )


def _map_coordinates(means: np.ndarray) -> tuple[np.ndarray, str]:
    """2-D map positions of the posterior means: the latent itself if 2-D, else its first two PCs."""
    if means.shape[1] == 1:
        return np.stack([means[:, 0], np.zeros(len(means))], 1), "z₁ (the latent has one dimension)"
    if means.shape[1] == 2:
        return means, "the latent itself (z₁, z₂)"
    centred = means - means.mean(0)
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    share = (singular[:2] ** 2).sum() / max((singular**2).sum(), 1e-12)
    return centred @ vt[
        :2
    ].T, f"first two principal components of the posterior means ({100 * share:.0f}% of their variance)"


@torch.no_grad()
def explorer_data(run, points: int = 1000) -> dict:
    """Everything the page needs, as plain data: the decoder, the map, the images, the sliders."""
    model, config = run.model, run.config
    check_model(model, config.model)
    images = data.evaluation_split(config.dataset, "test", config.binarize, "cpu", config.data_dir)
    if points < 2:
        raise ConfigError(f"--points must be at least 2, got {points}")
    pick = torch.randperm(len(images), generator=torch.Generator().manual_seed(config.seed))[:points]
    model = model.cpu()
    with evaluating(model):
        batch = images.batch(pick)
        conditional = isinstance(model, CVAE)
        if conditional and batch.y is None:
            raise ConfigError(
                f"{config.dataset} has no labels, which the conditional model {config.model} needs"
            )
        means, _ = model.encode(batch)
    means_np = means.numpy().astype(np.float64)
    coords, map_kind = _map_coordinates(means_np)
    spread = means_np.var(0)
    order = [int(i) for i in np.argsort(-spread, kind="stable")[: min(MAX_SLIDERS, means.shape[1])]]
    height, width = images.image_shape
    pixels = (batch.x.reshape(len(pick), height * width) * 255).round().clamp(0, 255).to(torch.uint8).numpy()
    labels = None if batch.y is None else [int(v) for v in batch.y]
    return {
        "title": Path(run.dir).name,
        "model": config.model,
        "dataset": config.dataset,
        "epoch": run.epoch,
        "z_dim": int(means.shape[1]),
        "num_classes": int(model.num_classes) if conditional else 0,
        "image": [height, width],
        "layers": export_decoder(model.decoder),
        "means": _floats(means),
        "map": _floats(torch.from_numpy(coords)),
        "map_kind": map_kind,
        "labels": labels,
        "images": base64.b64encode(pixels.tobytes()).decode(),
        "sliders": order,
        "spread": [float(spread[i]) for i in order],
    }


def write_explorer(run, points: int = 1000, out=None) -> Path:
    """Writes the explorer page (default RUN/explore.html); returns its path."""
    page = render(explorer_data(run, points))
    path = Path(out) if out is not None else Path(run.dir) / PAGE
    write_bytes(path, page.encode())
    return path


def render(payload: dict) -> str:
    """The self-contained page for `payload` (:func:`explorer_data`)."""
    # </script> cannot appear inside the JSON (base64 and numbers), but escape "<" anyway.
    blob = json.dumps(payload, separators=(",", ":")).replace("<", "\\u003c")
    title = html.escape(f"vaelab explorer: {payload['title']}")
    return TEMPLATE.replace("__TITLE__", title).replace("__STRIP__", str(STRIP)).replace("__DATA__", blob)


TEMPLATE = r"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>__TITLE__</title>
<style>
body { font-family: system-ui, sans-serif; margin: 1.2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.35em; margin: 0 0 0.2em; } .sub { color: #555; margin: 0 0 1em; font-size: 0.92em; }
.row { display: flex; gap: 1.5em; flex-wrap: wrap; align-items: flex-start; }
canvas { image-rendering: pixelated; border: 1px solid #ccc; background: #fff; }
#map { cursor: crosshair; } .panel { flex: 1 1 300px; } .panel.first { flex: 0 0 442px; }
label.slider { display: grid; grid-template-columns: 5.5em 1fr 3.5em; gap: 0.5em; align-items: center;
  font-family: monospace; font-size: 0.9em; margin: 0.15em 0; }
button { margin: 0.2em 0.3em 0.2em 0; } #timing { font-family: monospace; font-size: 0.9em; color: #333; }
#hover { position: absolute; pointer-events: none; display: none; border: 1px solid #888; background: #fff; }
.legend span { display: inline-block; margin-right: 0.7em; font-size: 0.85em; }
.legend i { display: inline-block; width: 0.8em; height: 0.8em; margin-right: 0.25em; vertical-align: -1px; }
</style></head>
<body>
<h1 id="title"></h1><p class="sub" id="sub"></p>
<div class="row">
  <div class="panel first">
    <canvas id="map" width="440" height="440"></canvas>
    <div class="legend" id="legend"></div>
    <p class="sub" id="map-kind"></p>
  </div>
  <div class="panel">
    <canvas id="image" width="224" height="224"></canvas>
    <p id="timing">decode: –</p>
    <div id="label-box" style="display:none">label <select id="label"></select></div>
    <div id="sliders"></div>
    <button id="reset">all latents 0</button>
    <p class="sub" id="current"></p>
  </div>
</div>
<h2 style="font-size:1.1em">Interpolation</h2>
<p class="sub">Set A and B from the current latent (click a point, or move the sliders), then look along the line between them.</p>
<button id="set-a">A = current</button><button id="set-b">B = current</button>
<span id="ab" class="sub"></span><br>
<canvas id="strip" width="10" height="10"></canvas>
<canvas id="hover" width="84" height="84"></canvas>
<script id="payload" type="application/json">__DATA__</script>
<script>
"use strict";
const D = JSON.parse(document.getElementById("payload").textContent);
const STRIP = __STRIP__;
function floats(b64) {
  const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
  return new Float32Array(bytes.buffer);
}
function bytes(b64) { return Uint8Array.from(atob(b64), c => c.charCodeAt(0)); }
const [H, W] = D.image, P = H * W, Z = D.z_dim, C = D.num_classes;
const layers = D.layers.map(l => Object.assign({}, l,
  l.weight ? {weight: floats(l.weight), bias: floats(l.bias)} : {}));
const means = floats(D.means), coords = floats(D.map), pictures = bytes(D.images);
const N = means.length / Z;

// --- the decoder, in double precision from float32 weights -----------------------------
function forward(input) {
  let x = Float64Array.from(input), shape = null;
  for (const l of layers) {
    if (l.op === "linear") {
      const out = new Float64Array(l.out);
      for (let o = 0; o < l.out; o++) {
        let s = l.bias[o]; const row = o * l.in;
        for (let i = 0; i < l.in; i++) s += l.weight[row + i] * x[i];
        out[o] = s;
      }
      x = out;
    } else if (l.op === "relu") { x = x.map(v => v > 0 ? v : 0); }
    else if (l.op === "softplus") { x = x.map(v => v * l.beta > l.threshold ? v : Math.log1p(Math.exp(l.beta * v)) / l.beta); }
    else if (l.op === "tanh") { x = x.map(Math.tanh); }
    else if (l.op === "elu") { x = x.map(v => v > 0 ? v : l.alpha * Math.expm1(v)); }
    else if (l.op === "leaky_relu") { x = x.map(v => v >= 0 ? v : l.slope * v); }
    else if (l.op === "reshape") { shape = l.shape.slice(); }
    else if (l.op === "conv_transpose") {
      const [ci, hi, wi] = shape, [kh, kw] = l.kernel, [sh, sw] = l.stride, [ph, pw] = l.padding;
      const ho = (hi - 1) * sh - 2 * ph + kh, wo = (wi - 1) * sw - 2 * pw + kw, co = l.out;
      const out = new Float64Array(co * ho * wo);
      for (let c = 0; c < co; c++) out.fill(l.bias[c], c * ho * wo, (c + 1) * ho * wo);
      for (let a = 0; a < ci; a++) for (let i = 0; i < hi; i++) for (let j = 0; j < wi; j++) {
        const v = x[(a * hi + i) * wi + j]; if (v === 0) continue;
        for (let c = 0; c < co; c++) {
          const wbase = ((a * co + c) * kh) * kw;
          for (let p = 0; p < kh; p++) {
            const r = i * sh - ph + p; if (r < 0 || r >= ho) continue;
            for (let q = 0; q < kw; q++) {
              const s = j * sw - pw + q; if (s < 0 || s >= wo) continue;
              out[(c * ho + r) * wo + s] += v * l.weight[wbase + p * kw + q];
            }
          }
        }
      }
      x = out; shape = [co, ho, wo];
    } else if (l.op === "crop") {
      const [, ho, wo] = shape, [hc, wc] = l.shape, out = new Float64Array(hc * wc);
      for (let r = 0; r < hc; r++) for (let s = 0; s < wc; s++) out[r * wc + s] = x[r * wo + s];
      x = out; shape = null;
    } else { throw new Error("unknown layer " + l.op); }
  }
  return x.map(v => 1 / (1 + Math.exp(-v)));
}
function decode(z, y) {
  const input = new Float64Array(Z + C);
  for (let i = 0; i < Z; i++) input[i] = z[i];
  if (C) input[Z + y] = 1;
  return forward(input);
}

// --- state and drawing --------------------------------------------------------------------
const state = {z: new Float64Array(Z), y: 0, a: null, b: null, times: []};
const COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];
function colour(label) { return label === null || label === undefined || label < 0 ? "#555" : COLOURS[label % 10]; }
function paint(canvas, pixels, x0 = 0, y0 = 0, scale = null) {
  const ctx = canvas.getContext("2d"), img = ctx.createImageData(W, H);
  for (let k = 0; k < P; k++) {
    const v = 255 - Math.round(255 * Math.min(1, Math.max(0, pixels[k])));
    img.data[4 * k] = img.data[4 * k + 1] = img.data[4 * k + 2] = v; img.data[4 * k + 3] = 255;
  }
  const tmp = document.createElement("canvas"); tmp.width = W; tmp.height = H;
  tmp.getContext("2d").putImageData(img, 0, 0);
  ctx.imageSmoothingEnabled = false;
  const w = scale ? W * scale : canvas.width, h = scale ? H * scale : canvas.height;
  ctx.drawImage(tmp, x0, y0, w, h);
}
function median(values) { const s = values.slice().sort((a, b) => a - b); return s[Math.floor(s.length / 2)]; }
function redraw() {
  const t0 = performance.now();
  const pixels = decode(state.z, state.y);
  const ms = performance.now() - t0;
  state.times.push(ms); if (state.times.length > 200) state.times.shift();
  state.last = pixels;
  paint(document.getElementById("image"), pixels);
  document.getElementById("timing").textContent =
    `decode: ${ms.toFixed(2)} ms; median ${median(state.times).toFixed(2)} ms over the last ${state.times.length}`;
  document.getElementById("timing").dataset.median = median(state.times);
  for (const input of document.querySelectorAll("#sliders input")) {
    const d = +input.dataset.dim; input.value = state.z[d];
    input.parentNode.querySelector("output").textContent = state.z[d].toFixed(2);
  }
  if (C) document.getElementById("label").value = state.y;
  document.getElementById("current").textContent = state.from === undefined ? "" : `from test image ${state.from}` ;
  drawStrip();
}
function setLatent(z, y) {
  for (let i = 0; i < Z; i++) state.z[i] = z[i];
  if (C && y !== undefined && y !== null && y >= 0) state.y = y;
  redraw();
}
function mapScale() {
  let lo = [Infinity, Infinity], hi = [-Infinity, -Infinity];
  for (let n = 0; n < N; n++) for (const k of [0, 1]) {
    lo[k] = Math.min(lo[k], coords[2 * n + k]); hi[k] = Math.max(hi[k], coords[2 * n + k]);
  }
  const canvas = document.getElementById("map"), m = 12;
  return n => [m + (coords[2 * n] - lo[0]) / (hi[0] - lo[0] || 1) * (canvas.width - 2 * m),
               canvas.height - m - (coords[2 * n + 1] - lo[1]) / (hi[1] - lo[1] || 1) * (canvas.height - 2 * m)];
}
const place = mapScale();
function drawMap() {
  const canvas = document.getElementById("map"), ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  for (let n = 0; n < N; n++) {
    const [x, y] = place(n);
    ctx.fillStyle = colour(D.labels ? D.labels[n] : null); ctx.globalAlpha = 0.75;
    ctx.beginPath(); ctx.arc(x, y, 2.6, 0, 2 * Math.PI); ctx.fill();
  }
  ctx.globalAlpha = 1;
}
function nearest(event) {
  const canvas = document.getElementById("map"), box = canvas.getBoundingClientRect();
  const px = (event.clientX - box.left) * canvas.width / box.width, py = (event.clientY - box.top) * canvas.height / box.height;
  let best = -1, bestD = 8 * 8;
  for (let n = 0; n < N; n++) {
    const [x, y] = place(n), d = (x - px) ** 2 + (y - py) ** 2;
    if (d < bestD) { best = n; bestD = d; }
  }
  return best;
}
function imageOf(n) { return Array.from(pictures.subarray(n * P, (n + 1) * P), v => v / 255); }
function meanOf(n) { return means.subarray(n * Z, (n + 1) * Z); }
function choose(n) { state.from = n; setLatent(meanOf(n), D.labels ? D.labels[n] : null); }
function drawStrip() {
  const canvas = document.getElementById("strip");
  const scale = 3, gap = 4;
  canvas.width = STRIP * (W * scale + gap); canvas.height = H * scale;
  const ctx = canvas.getContext("2d"); ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, canvas.width, canvas.height);
  state.strip = [];
  if (!state.a || !state.b) return;
  for (let s = 0; s < STRIP; s++) {
    const t = s / (STRIP - 1), z = new Float64Array(Z);
    for (let i = 0; i < Z; i++) z[i] = (1 - t) * state.a[i] + t * state.b[i];
    const pixels = decode(z, state.y); state.strip.push(pixels);
    paint(canvas, pixels, s * (W * scale + gap), 0, scale);
  }
}

// --- the page -------------------------------------------------------------------------------
document.getElementById("title").textContent = `Latent explorer: ${D.title}`;
document.getElementById("sub").textContent =
  `${D.model} on ${D.dataset}, epoch ${D.epoch}; latent of ${Z} dimensions; ${N} test images mapped. ` +
  `The decoder runs in this page: nothing is fetched.`;
document.getElementById("map-kind").textContent = `Map: ${D.map_kind}. Hover a point to see its image; click it to decode its posterior mean.`;
if (D.labels) {
  const seen = Array.from(new Set(D.labels)).sort((a, b) => a - b);
  document.getElementById("legend").innerHTML = seen.map(l => `<span><i style="background:${colour(l)}"></i>${l}</span>`).join("");
}
if (C) {
  document.getElementById("label-box").style.display = "";
  const select = document.getElementById("label");
  for (let c = 0; c < C; c++) select.add(new Option(String(c), String(c)));
  select.addEventListener("change", () => { state.y = +select.value; redraw(); });
}
const sliders = document.getElementById("sliders");
D.sliders.forEach((d, k) => {
  const row = document.createElement("label"); row.className = "slider";
  row.title = `variance of the posterior means: ${D.spread[k].toFixed(3)}`;
  row.innerHTML = `<span>z[${d}]</span><input type="range" min="-3" max="3" step="0.01" value="0" data-dim="${d}"><output>0.00</output>`;
  row.querySelector("input").addEventListener("input", e => { state.z[d] = +e.target.value; state.from = undefined; redraw(); });
  sliders.appendChild(row);
});
const map = document.getElementById("map"), hover = document.getElementById("hover");
map.addEventListener("mousemove", e => {
  const n = nearest(e);
  if (n < 0) { hover.style.display = "none"; hover.dataset.index = ""; return; }
  paint(hover, imageOf(n)); hover.dataset.index = n;
  hover.style.display = "block"; hover.style.left = (e.pageX + 14) + "px"; hover.style.top = (e.pageY + 14) + "px";
});
map.addEventListener("mouseleave", () => { hover.style.display = "none"; });
map.addEventListener("click", e => { const n = nearest(e); if (n >= 0) choose(n); });
document.getElementById("reset").addEventListener("click", () => { state.from = undefined; setLatent(new Float64Array(Z)); });
function showAB() {
  document.getElementById("ab").textContent = `A: ${state.a ? "set" : "–"}, B: ${state.b ? "set" : "–"}`;
}
document.getElementById("set-a").addEventListener("click", () => { state.a = Float64Array.from(state.z); showAB(); drawStrip(); });
document.getElementById("set-b").addEventListener("click", () => { state.b = Float64Array.from(state.z); showAB(); drawStrip(); });
drawMap(); showAB(); redraw();
window.vaelab = {decode: (z, y) => Array.from(decode(z, y || 0)), state, place, choose, means: n => Array.from(meanOf(n)), N, Z, C};
</script>
</body></html>
"""
