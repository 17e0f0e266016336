"""`edgekit package`, `edgekit verify`, `edgekit keys init|show`: parse arguments, call kit.package."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from kit.cli._ui import console, progress_bars, stdout
from kit.errors import EdgeKitError


def _out(text: str) -> None:
    stdout.print(text, soft_wrap=True, highlight=False)


def _shape(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        shape = [int(v) for v in text.split(",")]
    except ValueError:
        raise EdgeKitError(f"--input-shape {text!r}: give comma-separated integers like 1,1,32,32") from None
    if len(shape) != 4 or min(shape) < 1:
        raise EdgeKitError(f"--input-shape {text!r}: give N,C,H,W with positive sizes, e.g. 1,1,32,32")
    return shape


def _read_doc(path: Path | None, option: str) -> dict | None:
    if path is None:
        return None
    import yaml

    try:
        doc = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise EdgeKitError(f"{option} {path}: no such file") from None
    except yaml.YAMLError as e:
        raise EdgeKitError(f"{option} {path}: not YAML or JSON ({str(e).splitlines()[0]})") from None
    if not isinstance(doc, dict):
        raise EdgeKitError(f"{option} {path}: expected a mapping at the top level")
    return doc


def register(app: typer.Typer) -> None:
    keys_app = typer.Typer(help="The ed25519 key pair that signs bundles.", no_args_is_help=True)
    app.add_typer(keys_app, name="keys")

    @app.command("package")
    def package_cmd(
        model: str = typer.Argument(..., help="A .pte/.onnx/.ort file, a checkpoint, 'teacher', 'torchvision:NAME' or 'module:callable'."),
        target: str = typer.Option(..., "--target", "-t", help="executorch | onnx | ort"),
        out: Path = typer.Option(..., "--out", "-o", help="Bundle folder, or a single file when it ends in .tar."),
        input_shape: str = typer.Option(None, help="N,C,H,W of the model input, e.g. 1,1,32,32 (default: from --data, else 1,1,32,32)."),
        data: str = typer.Option(None, help="'digits', an .npz or an image folder: the reference input is its first test sample."),
        weights: Path = typer.Option(None, help="A state_dict to load into MODEL."),
        name: str = typer.Option(None, help="Model name on devices (replay protection is per name); default: MODEL's stem."),
        key: Path = typer.Option(None, help="Signing key (default: the one 'edgekit keys init' made)."),
        expires: str = typer.Option(None, help="Devices refuse the bundle after this: 30d, 12h, 2027-01-31, ..."),
        sequence: int = typer.Option(None, help="Replay-protection sequence (default: milliseconds since 1970)."),
        optimize: str = typer.Option(None, help="onnx/ort: ORT offline graph optimisation, basic | extended."),
        ort_platform: str = typer.Option(None, help="ort: target CPU for the converter's fixed optimisations, arm | amd64."),
        recipe: Path = typer.Option(None, help="Recipe (YAML/JSON) to record in the manifest."),
        report: Path = typer.Option(None, help="Compression report (JSON) to record in the manifest."),
        as_json: bool = typer.Option(False, "--json", help="Print the manifest as JSON."),
        preprocess: str = typer.Option(None, "--preprocess", help="Normalisation preset: imagenet | inception | none (default: the --recipe's; imagenet for torchvision:NAME)."),
        mean: str = typer.Option(None, "--mean", help="Per-channel mean, e.g. 0.485,0.456,0.406 (with --std)."),
        std: str = typer.Option(None, "--std", help="Per-channel std, e.g. 0.229,0.224,0.225."),
        resize: str = typer.Option(None, "--resize", help="resize | shorter_crop (how --data is brought to the input size)."),
        crop_fraction: float = typer.Option(None, "--crop-fraction", help="shorter_crop: the crop's share of the resized side (default 0.875)."),
        channel_order: str = typer.Option(None, "--channel-order", help="rgb | bgr (default rgb)."),
    ):
        """Package MODEL for one runtime as a signed bundle (manifest + signature + model + reference pair)."""
        import numpy as np

        from kit.package import check_request, package

        path = Path(model)
        model_file = path if path.suffix in (".pte", ".onnx", ".ort") else None
        check_request(model_file, target, optimize=optimize, expires=expires, key=key)  # before loading anything
        shape = _shape(input_shape)
        from kit.preprocess import cli_spec, resolve

        recipe_doc = _read_doc(recipe, "--recipe")
        recipe_pre = ((recipe_doc or {}).get("input") or {}).get("preprocess")
        try:
            pre, source = resolve(cli_spec(preprocess, mean, std, resize, crop_fraction, channel_order), recipe_pre,
                                  None if model_file else model)
        except EdgeKitError as e:
            raise EdgeKitError(f"--recipe {recipe}: input.preprocess: {e}" if recipe_pre and recipe else str(e)) from None
        if data:
            from kit.data import load_data

            splits = load_data(data, shape[-1] if shape else 32, preprocess=pre)
            example = splits.test.x[:1]  # preprocessed as the model is fed: the agent's reference input
            if shape and list(example.shape[1:]) != shape[1:]:
                raise EdgeKitError(f"--input-shape {input_shape}: the data gives {list(example.shape)}; drop one or match them")
            preprocessing = pre.manifest(example.shape, splits.name)
        else:
            shape = shape or [1, 1, 32, 32]
            # A random image in [0, 1), normalised like real input would be.
            example = pre.normalise(np.random.default_rng(0).random(shape, dtype=np.float32))
            preprocessing = pre.manifest(example.shape)
        console.print(f"preprocess: {pre.label} ({source})", highlight=False)
        if model_file is not None:
            src = model_file
        else:
            from kit.models import load_model

            src = load_model(model, weights)
        with progress_bars() as (progress, step):
            step(f"packaging {model} for {target}")
            bundle = package(src, target, out, example, name=name or path.stem.split(":")[-1] or "model",
                             key=key, expires=expires, sequence=sequence, optimize=optimize, ort_platform=ort_platform,
                             recipe=recipe_doc, compression=_read_doc(report, "--report"),
                             preprocessing=preprocessing, progress=progress)
        for w in bundle.warnings:
            console.print(f"[yellow]warning:[/] {w}")
        m = bundle.manifest
        if as_json:
            stdout.print_json(json.dumps(m))
            return
        _out(f"bundle   {bundle.path}  ({m['bundle_id']}, {m['runtime']['name']} {m['runtime']['format']}, "
                     f"needs >= {m['runtime'].get('min_version')})")
        _out(f"model    {m['model']['file']}  {m['model']['size']} bytes  sha256 {m['model']['sha256']}")
        if "delegation" in m:
            d = m["delegation"]
            _out(f"xnnpack  {d['delegated_nodes']} nodes in {d['delegated_subgraphs']} delegate(s), "
                         f"{d['non_delegated_nodes']} on portable kernels ({100 * d['coverage']:.0f}% delegated)")
        from kit.preprocess import describe

        _out(f"input    {describe(m.get('preprocessing'))}")
        _out(f"signed   {m.get('signer')}  name {m['name']!r} sequence {m['sequence']}"
                     + (f"  expires {m['expires']}" if m.get("expires") else ""))

    @app.command("verify")
    def verify_cmd(
        bundle: Path = typer.Argument(..., help="A bundle folder or .tar."),
        trust_dir: list[Path] = typer.Option(None, "--trust-dir", help="Folder or .pub file of trusted keys (default: this host's keys)."),
        as_json: bool = typer.Option(False, "--json"),
    ):
        """Check a bundle as a device would: signature, schema, expiry, every file's size and sha256."""
        from kit.package import verify

        v = verify(bundle, trust=list(trust_dir) if trust_dir else None)
        if as_json:
            stdout.print_json(json.dumps(v.to_dict()))
            return
        _out(f"OK {v.path}: bundle {v.bundle_id}, model {v.name!r} ({v.runtime} {v.format}), sequence {v.sequence}, "
                     f"{v.files} files verified, signed by {v.key_id}" + (f", expires {v.expires}" if v.expires else ""))
        from kit.preprocess import describe

        _out(f"input    {describe(v.preprocessing)}")
        for w in v.warnings:
            console.print(f"[yellow]warning:[/] {w}")

    @keys_app.command("init")
    def keys_init(
        force: bool = typer.Option(False, "--force", help="Replace an existing key pair."),
        key: Path = typer.Option(None, "--key", help="Where to write the private key (default: <config>/keys/signing.ed25519)."),
    ):
        """Create the ed25519 signing key pair (private key 0600, public key beside it)."""
        from kit.package.signing import init_keys

        pair = init_keys(key, force=force)
        _out(f"private  {pair.private}  (0600: keep it secret)")
        _out(f"public   {pair.public}  (devices trust it: <agent home>/trusted_keys/)")
        _out(f"key id   {pair.key_id}")

    @keys_app.command("show")
    def keys_show():
        """The signing key and the public keys devices should trust."""
        from kit.package.signing import key_id, public_key_paths, signing_key_path

        _out(f"signing  {signing_key_path()}  {key_id()}")
        for p in public_key_paths():
            _out(f"trust    {p}")
