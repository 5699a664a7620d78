"""Turn a published U-Net checkpoint into an export folder that stage 2 loads.

Where the checkpoints come from: guided-diffusion (OpenAI's unconditional 256x256 / LSUN models),
the MDM release (masked-diffusion pretraining on histology) and DDPM-segmentation (its FFHQ-256
model and the guided-diffusion models it reuses) publish PyTorch files (``.pt`` / ``.pth``) that
hold the U-Net's state dict. Download the file you want yourself from the project's own page;
nothing is downloaded here. Only unconditional models fit this U-Net: a class-conditional model's
``label_emb.weight`` is reported as an unexpected key.

Which preset matches: ``configs/paper.yaml`` is the MDM architecture. guided-diffusion's 256x256
models (and DDPM-segmentation's) keep the layout but use other widths and usually ``learn_sigma`` (6
output channels), so give the values from the release's flags with ``--set``, e.g. ``--set
model.model_channels=256 --set model.out_channels=6``; a mismatch is reported with the key or the
shape, and the input/output channel counts with the ``--set`` that fixes them. A DDPM
(noise-prediction) model should also get ``--set diffusion.objective=ddpm``: stage 2 corrupts the
tiles with the export's objective before extracting features.

The weights are read with ``torch.load(..., weights_only=True)`` (no pickled code runs), converted
to fp32, loaded strictly, and written atomically as ``config.yaml``, ``unet.safetensors`` and
``unet_raw.safetensors`` (the same weights in both: such a file holds one set)::

    python -m mdm.convert --checkpoint model.pt --config configs/paper.yaml [--set KEY=VALUE ...] --out DIR
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
import yaml
from safetensors import safe_open

from ..common.config import Config
from ..common.errors import CheckpointError
from ..nn.unet import build_unet
from .export import WEIGHTS, load_state_strict, save_export

WRAPPER_KEYS = ("state_dict", "model", "ema", "model_state_dict")
STRIP_PREFIXES = ("module.", "_orig_mod.")  # DDP, torch.compile


class ConvertError(CheckpointError):
    """A checkpoint that cannot be converted; the message names the file."""


def _is_state_dict(obj) -> bool:
    return (isinstance(obj, dict) and bool(obj) and all(isinstance(k, str) for k in obj)
            and all(isinstance(v, torch.Tensor) for v in obj.values()))


def _describe(obj) -> str:
    if isinstance(obj, dict):
        keys = [repr(k) for k in list(obj)[:8]]
        return f"a dict with keys {', '.join(keys)}{' ...' if len(obj) > 8 else ''}" if obj else "an empty dict"
    return f"a {type(obj).__name__}"


def read_state_dict(path: str | Path, key: str | None = None) -> dict[str, torch.Tensor]:
    """The U-Net state dict in a ``.pt`` / ``.pth`` file: plain, or under one of ``WRAPPER_KEYS``
    (or ``key``); a ``module.`` (DDP) prefix shared by all keys is stripped and floating tensors are
    made fp32."""
    path = Path(path)
    if not path.is_file():
        raise ConvertError(f"{path}: checkpoint not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises UnpicklingError/KeyError/EOFError... for non-checkpoints
        text = str(e)
        found = re.search(r"[Uu]nsupported (?:global: )?GLOBAL ([\w.]+)", text)
        if found and "is blocked" in text:
            raise ConvertError(
                f"{path}: refused: it holds code ({found.group(1)}) that the weights-only loader "
                f"refused to run; do not load this file with weights_only=False") from None
        if found:
            raise ConvertError(f"{path}: refused: it holds pickled objects other than tensors and plain containers "
                               f"(GLOBAL {found.group(1)}), which torch.load(weights_only=True) does not run; "
                               f"re-save the weights with torch.save(model.state_dict(), ...)") from None
        detail = " ".join(text.split())[:200] or type(e).__name__
        raise ConvertError(
            f"{path}: not a PyTorch checkpoint ({type(e).__name__}: {detail})") from None

    if key is not None:
        if not isinstance(obj, dict) or key not in obj:
            raise ConvertError(f"{path}: has no entry {key!r} (it is {_describe(obj)})")
        state = obj[key]
        if not _is_state_dict(state):
            raise ConvertError(
                f"{path}: entry {key!r} is not a state dict (it is {_describe(state)})")
    elif _is_state_dict(obj):
        state = obj
    else:
        found = [k for k in WRAPPER_KEYS if isinstance(obj, dict) and _is_state_dict(obj.get(k))]
        if not found:
            raise ConvertError(
                f"{path}: not a state dict (expected a dict of tensors, or one under "
                f"{', '.join(map(repr, WRAPPER_KEYS))}; it is {_describe(obj)})")
        if len(found) > 1:
            raise ConvertError(f"{path}: holds several state dicts ({', '.join(map(repr, found))}); choose one with "
                               f"--key, e.g. --key {found[0]}")
        state = obj[found[0]]

    for prefix in STRIP_PREFIXES:
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def _check_channels(state: dict[str, torch.Tensor], cfg: Config, source: str) -> None:
    """One-line errors with the ``--set`` that fixes the input/output channel counts and the base
    width."""
    m = cfg.model
    checks = []  # (state key, dim, config key, configured value, what)
    checks.append(("out.2.weight", 0, "model.out_channels", m.out_channels, "output channels"))
    checks.append(("input_blocks.0.0.weight", 1, "model.in_channels", m.in_channels,
                   "input channels"))
    if m.channel_mult and m.channel_mult[0] == 1:
        checks.append(("input_blocks.0.0.weight", 0, "model.model_channels", m.model_channels,
                       "base channels"))
    problems, fixes = [], []
    for key, dim, cfg_key, want, what in checks:
        w = state.get(key)
        if w is None or w.ndim != 4 or w.shape[dim] == want:
            continue  # a missing key is reported by the strict load
        n = int(w.shape[dim])
        note = " (a learn_sigma model predicts the variance too)" if cfg_key == "model.out_channels" and n == 2 * want \
            else ""
        problems.append(
            f"the checkpoint has {n} {what} ({key} {tuple(w.shape)}) but {cfg_key} is {want}{note}")
        fixes.append(f"--set {cfg_key}={n}")
    if problems:
        raise ConvertError(f"{source}: {'; '.join(problems)}; add {' '.join(fixes)}")


def _check_out(out_dir: Path, checkpoint: Path) -> None:
    """Refuse to replace a folder that is not an export, or one that holds the checkpoint itself."""
    out = out_dir.resolve()
    if checkpoint.resolve().is_relative_to(out):
        raise ConvertError(
            f"{out_dir}: holds the checkpoint {checkpoint}; choose another --out folder")
    if out.exists():
        if not out.is_dir():
            raise ConvertError(f"{out_dir}: exists and is not a folder")
        is_export = (out / "config.yaml").is_file() and any((out / w).is_file() for w in WEIGHTS.values())
        if any(out.iterdir()) and not is_export:
            raise ConvertError(f"{out_dir}: exists and is not an export folder (it would be replaced); choose a new "
                               f"--out folder")


def convert(checkpoint_path: str | Path, cfg: Config, out_dir: str | Path, *,
            key: str | None = None) -> Path:
    """Load the checkpoint into the U-Net that ``cfg.model`` describes (strictly) and write an
    export folder with ``cfg`` and the weights (as both EMA and raw); returns the folder."""
    checkpoint_path, out_dir = Path(checkpoint_path), Path(out_dir)
    state = read_state_dict(checkpoint_path, key)
    broken = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if broken:
        raise CheckpointError(
            f"{checkpoint_path}: {len(broken)} tensor(s) hold NaN or infinite values ({broken[0]}, "
            f"...): a diverged or damaged checkpoint, not converted")
    _check_channels(state, cfg, str(checkpoint_path))
    _check_out(out_dir, checkpoint_path)
    model = build_unet(cfg.model)
    load_state_strict(model, state, str(checkpoint_path))
    del state
    return save_export(out_dir, cfg, model, model)


def count_parameters(export_dir: Path) -> int:
    """Parameters in an export's EMA weights, read from the file header (no tensor is loaded)."""
    total = 0
    with safe_open(str(export_dir / WEIGHTS["ema"]), framework="pt") as f:
        for k in f.keys():
            n = 1
            for s in f.get_slice(k).get_shape():
                n *= s
            total += n
    return total


# guided-diffusion's own defaults (script_util.model_and_diffusion_defaults): a flag a release does
# not give has this value, not this toolkit's default
GUIDED_DIFFUSION_DEFAULTS = {
    "image_size": 64, "num_channels": 128, "num_res_blocks": 2, "num_heads": 4,
    "num_heads_upsample": -1,
    "num_head_channels": -1, "attention_resolutions": "16,8", "channel_mult": "", "dropout": 0.0,
    "class_cond": False, "use_checkpoint": False, "use_scale_shift_norm": True,
    "resblock_updown": False,
    "use_fp16": False, "use_new_attention_order": False, "learn_sigma": False,
    "diffusion_steps": 1000, "noise_schedule": "linear",
}
CHANNEL_MULT_BY_SIZE = {256: "1,1,2,2,4,4", 128: "1,1,2,3,4", 64: "1,2,3,4"}
# what the weights' shapes cannot tell apart: only the training flags can
UNCONFIRMED_KEYS = ("model.num_heads", "model.num_head_channels", "model.use_new_attention_order")


def read_flags(path: str | Path) -> dict[str, object]:
    """The training flags of a guided-diffusion / MDM release: a text file of ``--name value`` pairs
    (the ``MODEL_FLAGS`` / ``DIFFUSION_FLAGS`` lines of their READMEs, shell syntax such as
    ``MODEL_FLAGS="`` allowed) or a YAML / JSON mapping (e.g. an ``args.json``)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConvertError(f"{path}: cannot read the flags file ({e.strerror})") from None
    try:
        mapping = yaml.safe_load(text)
    except yaml.YAMLError:
        mapping = None
    if isinstance(mapping, dict):
        return {str(k): v for k, v in mapping.items()}
    flags = dict(re.findall(r"--([A-Za-z_]+)[ =]+([^\s\"']+)", text))
    if not flags:
        raise ConvertError(
            f"{path}: no flags found (expected --name value pairs or a YAML/JSON mapping)")
    return {k: yaml.safe_load(v) for k, v in flags.items()}


def flags_to_overrides(flags: dict[str, object], source: str) -> list[str]:
    """``--set`` overrides (``model.*``, ``diffusion.*``) for a release's flags, completed with
    guided-diffusion's defaults; flags of models this U-Net cannot hold (class-conditional,
    fractional channel multipliers) are a ``ConvertError``."""
    try:
        return _overrides({**GUIDED_DIFFUSION_DEFAULTS, **flags}, source)
    except (TypeError, ValueError) as e:  # e.g. --image_size abc
        raise ConvertError(f"{source}: a flag that must be a number is not one ({e})") from None


def _overrides(f: dict[str, object], source: str) -> list[str]:
    if f["class_cond"]:
        raise ConvertError(
            f"{source}: class_cond=True: a class-conditional model does not fit this U-Net")
    if f["num_heads_upsample"] not in (-1, f["num_heads"]):
        raise ConvertError(
            f"{source}: num_heads_upsample={f['num_heads_upsample']} differs from num_heads, which "
            f"this U-Net does not support")
    def listed(value) -> str:  # "1,2,4" as MODEL_FLAGS give it; args.json may hold a list
        return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)

    mult = listed(f["channel_mult"]) or CHANNEL_MULT_BY_SIZE.get(int(f["image_size"]))
    if mult is None or "." in mult:
        raise ConvertError(
            f"{source}: channel_mult {mult or '(default)'} at image_size {f['image_size']} is not "
            f"supported (integer multipliers only); give it with --set model.channel_mult=[...]")

    def ints(text) -> str:
        return "[" + ",".join(str(int(v)) for v in listed(text).split(",") if v.strip()) + "]"

    return [f"model.image_size={f['image_size']}", f"model.model_channels={f['num_channels']}",
            f"model.num_res_blocks={f['num_res_blocks']}", f"model.num_heads={f['num_heads']}",
            f"model.num_head_channels={f['num_head_channels']}",
            f"model.attention_resolutions={ints(f['attention_resolutions'])}",
            f"model.channel_mult={ints(mult)}", f"model.dropout={f['dropout']}",
            f"model.use_scale_shift_norm={str(f['use_scale_shift_norm']).lower()}",
            f"model.resblock_updown={str(f['resblock_updown']).lower()}",
            f"model.use_new_attention_order={str(f['use_new_attention_order']).lower()}",
            f"model.out_channels={6 if f['learn_sigma'] else 3}",
            f"diffusion.timesteps={f['diffusion_steps']}",
            f"diffusion.beta_schedule={f['noise_schedule']}"]


def unconfirmed_warning(cfg: Config, overrides: list[str], flags_given: bool) -> str | None:
    """A warning when the attention head layout and order come from the config alone: the weights
    cannot confirm them, and a wrong value converts without error but gives other outputs."""
    if flags_given or all(
        any(o.split("=", 1)[0].strip() == k for o in overrides) for k in UNCONFIRMED_KEYS):
        return None
    m = cfg.model
    return (f"the weights cannot tell the attention head layout or order; using num_heads={m.num_heads}, "
            f"num_head_channels={m.num_head_channels}, use_new_attention_order={m.use_new_attention_order} from the "
            f"config: if the release's flags differ, pass them with --flags FILE (or --set)")
