"""The ``stvh`` command line: the only user-facing entry point.

Every subcommand has ``--help``. Data errors print one line naming the file and
line at fault and exit with status 2 instead of a traceback.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
from pathlib import Path
from typing import Optional

import typer

from .data.errors import DataError, count_kinds

app = typer.Typer(help="Multi-focused video group activity hashing (STVH / M-STVH).",
                  no_args_is_help=True, add_completion=False,
                  pretty_exceptions_show_locals=False)
data_app = typer.Typer(help="Datasets: generate synthetic data, inspect any supported format.",
                       no_args_is_help=True)
app.add_typer(data_app, name="data")


def _fail(message: str, code: int = 2) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


_HELD: list[contextlib.ExitStack] = []  # one per running command (friendly_errors)


def friendly_errors(fn):
    """Turn data, argument and file-system errors into a one-line message and exit status 2."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from .train.checkpoint import CheckpointError

        try:
            with contextlib.ExitStack() as held:  # write locks taken by _lock, released when the command ends
                _HELD.append(held)
                try:
                    return fn(*args, **kwargs)
                finally:
                    _HELD.pop()
        except (DataError, ValueError, FileExistsError, ImportError, ConnectionError, CheckpointError) as exc:
            _fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        except OSError as exc:  # permission denied, disk full, a directory where a file belongs, ...
            from .outputs import os_error_message
            _fail(os_error_message(exc))
    return wrapper


def _lock(path: Path, command: str, flag: Optional[str] = "--out") -> None:
    """Hold the write lock of output ``path`` until this command ends (stvh.locks; rank 0 only under torchrun)."""
    from .locks import output_lock

    if int(os.environ.get("RANK", 0)) == 0:
        _HELD[-1].enter_context(output_lock(path, command, flag=flag,
                                            note=lambda line: typer.echo(f"note: {line}", err=True)))


def _check_free(path: Path, flag: Optional[str] = "--out") -> None:
    """Stop when another process writes ``path`` (before output checks that would say "not empty")."""
    from .locks import check_free

    if int(os.environ.get("RANK", 0)) == 0:  # under torchrun rank 0 holds the lock for all ranks
        check_free(path, flag=flag)


def _version(value: bool) -> None:
    if value:
        from . import __version__
        typer.echo(f"stvh {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """Multi-focused video group activity hashing (STVH / M-STVH)."""
    _exit_on_sigterm_installed()


def _exit_on_sigterm(signum, frame) -> None:
    """SIGTERM ends a command as Ctrl-C does: ``finally`` blocks run, so write locks and temporary files are
    removed (the default action kills the process where it stands)."""
    raise SystemExit(128 + signum)


def _exit_on_sigterm_installed() -> None:
    """Install :func:`_exit_on_sigterm` unless someone else handles SIGTERM (or this is not the main thread)."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _exit_on_sigterm)


def _write_skipped_note(count: int, path: Path) -> None:
    typer.echo(f"skipped {count} bad input(s); listed in {path}", err=True)


def _parse_size(size: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in size.lower().split("x"))
    except ValueError:
        raise typer.BadParameter(f"expected HxW, e.g. 180x320, got {size!r}") from None
    return h, w


@data_app.command("synth")
@friendly_errors
def data_synth(
    out: Path = typer.Option(..., "--out", help="Output folder (Volleyball layout). Resumes when it holds a "
                                                 "partial run with the same parameters."),
    seed: int = typer.Option(0, help="Random seed: the same seed gives byte-identical annotations."),
    matches: int = typer.Option(6, help="Number of matches (visual groups: court and jersey colours)."),
    clips_per_match: int = typer.Option(60, help="Clips per match."),
    frames: int = typer.Option(10, help="Frames per clip (T)."),
    size: str = typer.Option("180x320", help="Frame size HxW in pixels."),
    players_per_side: int = typer.Option(6, help="Players per team (N = 2 x this)."),
    jitter: float = typer.Option(1.0, help="Gaussian noise on annotated boxes, pixels."),
    pan: float = typer.Option(4.0, help="Maximum camera pan over a clip, pixels."),
    occlusion: float = typer.Option(0.05, help="Probability a person is partly occluded."),
    missing: float = typer.Option(0.05, help="Probability a person is absent from a clip."),
    label_noise: float = typer.Option(0.0, help="Probability a clip's activity label is replaced at random."),
    test_fraction: float = typer.Option(0.3, help="Fraction of each match's clips in the test split."),
    overwrite: bool = typer.Option(False, help="Replace a synthetic dataset made with other settings in OUT."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
):
    """Generate the synthetic volleyball-like dataset (the embedded default)."""
    from .data.synth import generate

    result = generate(out, matches=matches, clips_per_match=clips_per_match, frames=frames,
                      size=_parse_size(size), players_per_side=players_per_side, jitter=jitter, pan=pan,
                      occlusion=occlusion, missing=missing, label_noise=label_noise, seed=seed,
                      test_fraction=test_fraction, progress=progress, overwrite=overwrite)
    typer.echo(json.dumps(result, indent=2, default=str))


@data_app.command("export-mot")
@friendly_errors
def data_export_mot(
    src: Path = typer.Argument(..., help="Dataset folder of any supported format (clips with frames are exported)."),
    out: Path = typer.Option(..., "--out", help="Folder to write the MOT layout into."),
    media: str = typer.Option("video", help="video (an mp4 per video), frames (a JPEG folder per video) or mixed."),
    labels: bool = typer.Option(True, help="Write the activity column of clips.csv (--no-labels: leave it empty)."),
    splits: bool = typer.Option(True, help="Write splits.json with the source's train/test split."),
    videos: Optional[list[str]] = typer.Option(None, "--videos", help="Export only these videos (repeat the flag)."),
    unlabeled: Optional[list[str]] = typer.Option(None, "--unlabeled", help="Videos whose clips get no label and no "
                                                                            "split (repeat the flag)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Write into a non-empty --out folder."),
):
    """Write a dataset in the MOT user layout (tracks + video or frames + clips.csv), e.g. to try your-footage runs."""
    from .data.mot_export import export_mot
    from .outputs import check_output

    check_output(out, inputs=[(src, "dataset")], overwrite=overwrite, kind="dir", what="MOT dataset")
    result = export_mot(src, out, media=media, labels=labels, splits=splits, videos=videos or None,
                        unlabeled=unlabeled or ())
    typer.echo(json.dumps(result, indent=2))


@data_app.command("info")
@friendly_errors
def data_info(
    root: Path = typer.Argument(..., help="Dataset folder."),
    format: Optional[str] = typer.Option(None, "--format", help="volleyball | cad | caed | mot (detected when "
                                                                 "omitted)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of tables."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip and count bad lines/clips instead of failing."),
):
    """Print clips per split and class histograms of a dataset."""
    from .data.formats import read_dataset

    ds = read_dataset(root, format, skip_bad=skip_bad, flag=None)
    summary = ds.summary()
    if skip_bad:
        from .data.skipped import skipped_rows
        summary["skipped_by_kind"] = count_kinds(ds.skipped)
        summary["skipped_inputs"] = skipped_rows(ds.skipped)
    if as_json:
        typer.echo(json.dumps(summary))
        return
    typer.echo(format_summary(summary))


def format_summary(s: dict) -> str:
    """Human-readable tables of a dataset summary."""
    lines = [f"{s['format']} dataset at {s['root']}",
             f"  clips: {s['clips']}   videos: {len(s['clips_per_video'])}   visual groups: {s['groups']}   "
             f"persons: {s['persons']}   frames/clip: {s['frames_per_clip']}",
             f"  tracked clips: {s['tracked_clips']}   clips with frames: {s['clips_with_frames']}   "
             f"skipped: {s['skipped']}", "", "  clips per split:"]
    lines += [f"    {k:<18}{v:>7}" for k, v in s["clips_per_split"].items() if k]
    if s["clips_per_split"].get(""):  # clips splits.json does not list: counted, never trained on silently
        lines.append(f"    {'not in any split':<18}{s['clips_per_split']['']:>7}   (no split in splits.json or clips.csv: "
                     "not trained on; data.unlisted=train trains on them)")
    splits = list(s["activity_counts_per_split"])
    names = list(s["activities"]) + (["unlabeled"] if "unlabeled" in s["activity_counts"] else [])
    lines += ["", "  activity".ljust(20) + "".join(f"{sp:>9}" for sp in splits) + f"{'total':>9}"]
    for name in names:
        row = [s["activity_counts_per_split"][sp].get(name, 0) for sp in splits]
        lines.append(f"    {name:<16}" + "".join(f"{v:>9}" for v in row) + f"{sum(row):>9}")
    lines += ["", "  person actions:"]
    lines += [f"    {k:<16}{v:>9}" for k, v in s["action_counts"].items()]
    if s.get("skipped_by_kind"):
        lines += ["", "  skipped:"] + [f"    {k:<16}{v:>9}" for k, v in s["skipped_by_kind"].items()]
        rows = s.get("skipped_inputs", [])
        for r in rows[:20]:
            where = f"{r['file']}:{r['line']}" if r["line"] else r["file"] or f"clip {r['clip']}"
            lines.append(f"    {where}: {r['kind']}: {r['message']}")
        if len(rows) > 20:
            lines.append(f"    ... and {len(rows) - 20} more (--json lists them all)")
    return "\n".join(lines)


ENGINE_HELP = ("local (this process) or ray (one task per video on a Ray cluster; needs "
               '`pip install "stvh[cluster]"`; docs/scale.md). Both give the same bytes per clip.')
ADDRESS_HELP = ("With --engine ray: the cluster (auto, HOST:6379 or ray://HOST:10001); default: a local Ray "
                "instance started and stopped by this command.")
WORKERS_HELP = "With --engine ray and no --address: worker processes of the local instance (default: every CPU)."
THREADS_HELP = "With --engine ray: torch threads per worker task (each task asks Ray for as many CPUs)."
RETRIES_HELP = ("With --engine ray: more tries for a failing video before it is left out and listed in "
                "failed.csv (FEATS/failed.csv, CODES.failed.csv).")


@app.command("extract", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@friendly_errors
def extract_cmd(
    ctx: typer.Context,
    data: Path = typer.Option(..., "--data", help="Dataset folder."),
    out: Path = typer.Option(..., "--out", help="Feature cache folder (resumes when it exists; clips whose "
                                                 "boxes or frame files changed are extracted again)."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML config: backbone, weights, frame size, PCA, "
                                                               "reader options and seed come from it, so `stvh "
                                                               "train` with the same config accepts the cache "
                                                               "(default: the shipped src/stvh/configs/default.yaml; "
                                                               "`stvh config show` prints it)."),
    backbone: Optional[str] = typer.Option(None, help="CNN backbone (see docs/visual.md); default: the config's "
                                                      "model.backbone (efficientnet_lite0 in the default config)."),
    weights: Optional[Path] = typer.Option(None, help="Local state-dict file of the backbone."),
    format: Optional[str] = typer.Option(None, "--format", help="Dataset format (detected when omitted)."),
    frame_size: Optional[str] = typer.Option(None, help="Resize frames to HxW before the backbone "
                                                        "(default: the config's extract.frame_size)."),
    batch_clips: int = typer.Option(4, min=1, help="Clips per backbone call."),
    device: str = typer.Option("cpu", help="cpu, cuda or cuda:N."),
    seed: Optional[int] = typer.Option(None, help="Seed of a randomly initialised backbone (default: the "
                                                  "config's seed, else 0)."),
    pca: Optional[int] = typer.Option(None, min=1, help="Store the RoI channels projected on their top-k "
                                                        "principal directions (fitted on training clips) instead "
                                                        "of all C (default: the config's extract.pca)."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip and count bad clips (listed in OUT/skipped.csv) "
                                                            "instead of failing."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
    engine: str = typer.Option("local", "--engine", help=ENGINE_HELP),
    address: Optional[str] = typer.Option(None, "--address", help=ADDRESS_HELP),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help=WORKERS_HELP),
    threads: int = typer.Option(1, "--threads", min=1, help=THREADS_HELP),
    retries: int = typer.Option(2, "--retries", min=0, help=RETRIES_HELP),
):
    """Stage 1: run the backbone once and cache per-person per-frame RoI features.

    Without --config the shipped default config is used (src/stvh/configs/default.yaml; `stvh config show`
    prints it), the same one `stvh train` uses, so the bare commands agree. With --config the cache is built
    exactly as `stvh demo` and `stvh train` expect from that config; flags given explicitly override the config.
    Extra key=value arguments override config keys as in `stvh train` (e.g. extract.pca=null for raw channels).
    """
    from .outputs import check_output
    from .train.config import resolve_config
    from .train.extract import extract_with_config
    from .train.loop import check_device

    check_device(device)  # up front: "--device cuda: no CUDA device here; use --device cpu"
    _check_engine(engine, address, device)
    check_output(out, inputs=[(data, "dataset"), (config, "config")], overwrite=True, kind="dir",
                 what="feature cache")
    if out.is_dir() and any(out.iterdir()) and not (out / "meta.json").is_file():
        _fail(f"refusing to write feature cache {out}: the folder holds other files (no meta.json); "
              "choose an empty or new --out")
    _lock(out, "stvh extract")  # one writer per cache (stvh.locks)
    overrides = [*ctx.args, *([f"model.backbone={backbone}"] if backbone else [])]
    if weights:
        overrides.append(f"model.weights={weights}")
    if frame_size:
        h, w = _parse_size(frame_size)
        overrides.append(f"extract.frame_size=[{h}, {w}]")
    if pca is not None:
        overrides.append(f"extract.pca={pca}")
    if seed is not None:
        overrides.append(f"seed={seed}")
    if format:
        overrides.append(f"data.format={format}")
    cfg, notes = resolve_config(config, overrides, fitted_notes=False)
    for note in notes:
        typer.echo(f"note: {note}", err=True)
    _connect(engine, address, workers, threads)
    try:
        result = extract_with_config(cfg, data, out, batch_clips=batch_clips, device=device, progress=progress,
                                     skip_bad=skip_bad, engine=engine, address=address, workers=workers,
                                     threads=threads, retries=retries)
    except KeyboardInterrupt:
        from .data.feature_cache import FeatureCache
        done = len(FeatureCache(out)) if (out / "meta.json").is_file() else 0
        typer.secho(f"interrupted; {done} clips are cached in {out}; run the same command again to resume",
                    fg=typer.colors.YELLOW, err=True)
        raise typer.Exit(130)
    typer.echo(f"resumed {result['resumed']}, re-extracted {result['re_extracted']} (inputs changed), extracted "
               f"{result['extracted'] - result['re_extracted']}" + (f"; {result['dropped']} clips no longer in the "
                                                                    "dataset removed" if result["dropped"] else ""),
               err=True)
    if result["no_frames"]:
        typer.echo(f"{result['cached']} clips cached; {result['no_frames']} of {result['clips']} clips have no "
                   "frames and were not extracted (training uses the clips that have features)", err=True)
    if skip_bad:
        _write_skipped_note(result["skipped"], out / "skipped.csv")
    typer.echo(json.dumps(result, indent=2))
    _fail_videos(result["failed_videos"], out / "failed.csv")


def _check_engine(engine: str, address: Optional[str], device: str) -> None:
    """Engine flags, up front: a known engine, Ray installed, CPU workers."""
    if engine not in ("local", "ray"):
        _fail(f"--engine must be local or ray, got {engine!r}")
    if engine == "local":
        if address is not None:
            _fail("--address needs --engine ray")
        return
    from .train.ray_engine import need_ray

    need_ray()  # error: --engine ray needs Ray: pip install "stvh[cluster]"
    if device not in ("cpu", "auto"):
        _fail(f"--engine ray runs on CPU workers; use --device cpu, not --device {device}")


def _connect(engine: str, address: Optional[str], workers: Optional[int], threads: int) -> None:
    """With --engine ray, join (or start) Ray for the rest of the command, before anything is written."""
    if engine == "ray":
        from .train.ray_engine import cluster
        _HELD[-1].enter_context(cluster(address, workers, threads))


def _fail_videos(failed: list, path: Path) -> None:
    """Exit 2 after the summary when the Ray engine gave up on some videos (the others are written)."""
    if failed:
        _fail(f"{len(failed)} video(s) failed after their retries and were left out (listed in {path}): "
              f"{', '.join(failed[:5])}{' ...' if len(failed) > 5 else ''}; run the same command again to retry them")


@app.command("train", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@friendly_errors
def train_cmd(
    ctx: typer.Context,
    config: Optional[Path] = typer.Option(None, "--config", help="YAML config (configs/*.yaml; default: the shipped "
                                                               "src/stvh/configs/default.yaml, printed by `stvh "
                                                               "config show`)."),
    data: Optional[Path] = typer.Option(None, "--data", help="Dataset folder."),
    features: Optional[Path] = typer.Option(None, "--features", help="Feature cache from `stvh extract` (CNN "
                                                                     "backbones); its backbone, frame size and PCA "
                                                                     "are used where the config does not set them."),
    out: Optional[Path] = typer.Option(None, "--out", help="Run folder to create."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Run folder to continue after a kill (its "
                                                                "config, data and features are reused)."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip and count bad lines/clips (listed in "
                                                            "OUT/skipped.csv) instead of failing."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace what an earlier run left in --out."),
    progress: bool = typer.Option(True, help="Show progress bars."),
):
    """Stage 2: train STVH / M-STVH. Extra arguments key=value override config keys (e.g. model.bits=64).

    Without --config the shipped default config is used (src/stvh/configs/default.yaml; `stvh config show`
    prints it, the same one `stvh extract` uses). With --features, the cache's backbone, frame size and PCA
    are used where the config file and the overrides do not set them.
    """
    import shutil

    from .outputs import check_output
    from .train.checkpoint import check_resume_config, read_run_info
    from .train.config import load_config, resolve_config
    from .train.loop import TrainingInterrupted, fit

    if resume is not None:
        _check_free(resume, flag=None)  # a run being written is said so, even before its run.json exists
        if not (resume / "config.yaml").is_file() or not (resume / "run.json").is_file():
            _fail(f"{resume} is not a run folder (config.yaml or run.json missing)")
        _lock(resume, "stvh train", flag=None)  # one writer per run folder (stvh.locks)
        info = read_run_info(resume)
        cfg = load_config(resume / "config.yaml", list(ctx.args))
        check_resume_config(load_config(resume / "config.yaml"), cfg)  # before anything is built
        out, data = resume, data or Path(info["data"])
        features = features or (Path(info["features"]) if info.get("features") else None)
    else:
        if data is None or out is None:
            _fail("--data and --out are required (or --resume RUN)")
        cfg, notes = resolve_config(config, list(ctx.args), features, fitted_notes=False)
        for note in notes:
            typer.echo(f"note: {note}", err=True)
        _check_free(out)  # a second writer is told who writes --out, before "not empty" (stvh.locks)
        check_output(out, inputs=[(data, "dataset"), (features, "feature cache"), (config, "config")],
                     overwrite=overwrite, kind="dir", what="run folder")
        _lock(out, "stvh train")  # held before --overwrite empties the folder
        if overwrite and out.is_dir() and int(os.environ.get("RANK", 0)) == 0:
            if any(out.iterdir()) and not (out / "run.json").is_file():
                _fail(f"refusing to replace {out}: it is not a run folder (no run.json)")
            shutil.rmtree(out)
    try:
        result = fit(cfg, data, features, out, resume=resume is not None, progress=progress, skip_bad=skip_bad,
                     log=lambda line: typer.echo(line, err=True))
    except TrainingInterrupted as exc:
        typer.secho(f"{exc}; continue with: stvh train --resume {exc.run}", fg=typer.colors.YELLOW, err=True)
        raise typer.Exit(130)
    if skip_bad:
        _write_skipped_note(result["skipped"], out / "skipped.csv")
    if int(os.environ.get("RANK", 0)) == 0:  # under torchrun only rank 0 reports
        typer.echo(json.dumps(result, indent=2))


@app.command("encode")
@friendly_errors
def encode_cmd(
    run: Path = typer.Option(..., "--run", help="Run folder made by `stvh train`."),
    out: Path = typer.Option(..., "--out", help="CODES file to write (.npz)."),
    data: Optional[Path] = typer.Option(None, "--data", help="Dataset (default: the run's)."),
    features: Optional[Path] = typer.Option(None, "--features", help="Feature cache (default: the run's)."),
    checkpoint: str = typer.Option("best", help="best or last."),
    device: str = typer.Option("auto", help="auto, cpu, cuda."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip and count bad lines/clips (listed in "
                                                            "OUT.skipped.csv) instead of failing."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out file."),
    engine: str = typer.Option("local", "--engine", help=ENGINE_HELP),
    address: Optional[str] = typer.Option(None, "--address", help=ADDRESS_HELP),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help=WORKERS_HELP),
    threads: int = typer.Option(1, "--threads", min=1, help=THREADS_HELP),
    retries: int = typer.Option(2, "--retries", min=0, help=RETRIES_HELP),
    progress: bool = typer.Option(True, help="Show a progress bar (--engine ray)."),
):
    """Write the codes of every depth for every clip (packed bits, ids, labels).

    --data may name another dataset (e.g. unlabelled footage): its labels are mapped onto the run's by name,
    and a CNN run computes its features from the frames unless --features is given.
    """
    from .train.encode import encode
    from .train.loop import check_device

    check_device(device)
    _check_engine(engine, address, device)
    _check_free(out)
    check_output_of_encode(run, out, data, features, overwrite)
    _lock(out, "stvh encode")
    _connect(engine, address, workers, threads)
    result = encode(run, out, data=data, features=features, checkpoint=checkpoint, device=device,
                    skip_bad=skip_bad, log=lambda line: typer.echo(line, err=True), engine=engine, address=address,
                    workers=workers, threads=threads, retries=retries, progress=progress)
    if skip_bad:
        from .train.encode import skipped_path
        _write_skipped_note(result["skipped"], skipped_path(out))
    typer.echo(json.dumps(result, indent=2))
    from .train.encode import failed_path
    _fail_videos(result["failed_videos"], failed_path(out))


@app.command("ingest")
@friendly_errors
def ingest_cmd(
    folder: Path = typer.Argument(..., metavar="DIR", help="MOT-layout folder: tracks/NAME.txt with videos/NAME.mp4 "
                                                           "or frames/NAME/."),
    run: Path = typer.Option(..., "--run", help="Run folder made by `stvh train` (its model encodes the clips)."),
    index: Path = typer.Option(..., "--index", help="Index file to add to (created when missing); its ledger "
                                                    "INDEX.ingest.json records what was ingested."),
    settle: float = typer.Option(1.0, "--settle", help="Seconds a video's files must stay unchanged before reading."),
    retries: int = typer.Option(3, "--retries", help="Reads of a video that fails to open before it is reported."),
    strict: bool = typer.Option(False, "--strict", help="Exit with status 2 when a file was skipped."),
    detector: Optional[str] = typer.Option(None, "--detector", help="Track footage that comes without tracks: "
                                           "FILE.onnx or hog (stvh track's defaults; docs/live.md)."),
    region: Optional[str] = typer.Option(None, "--region", help="--detector: keep boxes whose foot point is inside "
                                         "x1,y1,x2,y2 or a polygon file (as stvh track)."),
    track_config: Optional[Path] = typer.Option(None, "--track-config", metavar="FILE", help="Track footage that "
                                                "comes without tracks as this file says (the track.yaml `stvh "
                                                "track` writes; --detector/--region win over it)."),
    checkpoint: str = typer.Option("best", help="best or last."),
    device: str = typer.Option("cpu", help="cpu, cuda or cuda:N."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
):
    """Add the videos of DIR that are new or changed since the last run to an index (docs/live.md)."""
    from .ingest import ingest_folder
    from .outputs import check_output
    from .train.loop import check_device

    check_device(device)
    if not settle >= 0:
        _fail(f"--settle must be >= 0 seconds, got {settle}")
    if retries < 1:
        _fail(f"--retries must be >= 1, got {retries}")
    if not folder.is_dir():
        _fail(f"DIR {folder} is not a folder (a MOT-layout folder: tracks/NAME.txt + videos/ or frames/)")
    _check_free(index, flag="--index")
    check_output(index, inputs=[(folder, "footage folder"), (run, "run folder")], overwrite=True, what="index",
                 flag="--index")
    _lock(index, "stvh ingest", flag="--index")
    import logging
    logging.getLogger("stvh.ingest").addHandler(logging.NullHandler())  # the skipped files are listed below
    det, opts = _detector(detector, region, track_config)
    result = ingest_folder(folder, run, index, settle=settle, retries=retries, checkpoint=checkpoint, device=device,
                           progress=progress and sys.stderr.isatty(), detector=det, track_options=opts)
    typer.echo(f"ingested {result['videos']} videos ({result['clips']} clips) into {index}; it holds "
               f"{result['total_clips']} clips")
    if result["skipped"]:
        typer.echo(f"skipped {len(result['skipped'])} file(s):", err=True)
        for s in result["skipped"]:
            typer.echo(f"  {s['file']}: {s['reason']}", err=True)
        if strict:
            _fail(f"{len(result['skipped'])} file(s) skipped (--strict)")


def _detector(spec: Optional[str], region: Optional[str], config: Optional[Path]):
    """``--detector`` / ``--region`` / ``--track-config`` of ingest -> (detector or None, TrackOptions or None)."""
    from .track.settings import tracking_from

    return tracking_from(spec, region, config)


def check_output_of_encode(run: Path, out: Path, data: Optional[Path], features: Optional[Path],
                           overwrite: bool) -> None:
    """A CODES file may live in the run folder, never over one of the run's files or any other input."""
    from .outputs import check_output
    from .train.encode import predictions_path

    run_files = [(run / name, "run file") for name in ("best.pt", "last.pt", "run.json", "config.yaml",
                                                      "filter.npz", "metrics.csv", "metrics.json")]
    info = {}
    if (run / "run.json").is_file():
        try:
            info = json.loads((run / "run.json").read_text(encoding="utf-8"))
        except ValueError:
            pass  # encode names the corrupt file
    inputs = [(run, "run folder"), *run_files, (data or info.get("data"), "dataset"),
              (features or info.get("features"), "feature cache")]
    check_output(out, inputs=inputs, overwrite=overwrite, allow_inside=[run], what="CODES file")
    check_output(predictions_path(out), inputs=inputs, overwrite=True, allow_inside=[run],
                 what="predictions file")


@app.command("eval")
@friendly_errors
def eval_cmd(
    run: Path = typer.Option(..., "--run", help="Run folder; codes are encoded into RUN/codes.npz if missing."),
    data: Optional[Path] = typer.Option(None, "--data", help="Dataset (default: the run's)."),
    features: Optional[Path] = typer.Option(None, "--features", help="Feature cache (default: the run's)."),
    as_json: bool = typer.Option(False, "--json", help="Print metrics.json."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip and count bad lines/clips when encoding "
                                                            "(listed in RUN/codes.skipped.csv)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Folder for codes.npz and metrics.json (default: RUN; "
                                                           "with --data/--features of other data RUN/eval-NAME, "
                                                           "so the run's own are never replaced)."),
):
    """Accuracy, MPCA, action accuracy and mAP@5/10/20/50 (train = database, test = queries)."""
    from .eval.evaluate import check_eval_splits, eval_folder, evaluate, format_headline
    from .outputs import check_output
    from .train.encode import encode, skipped_path

    dest = eval_folder(run, data, features, out)
    if dest.resolve() != run.resolve():
        check_output(dest, inputs=[(data, "dataset"), (features, "feature cache"), (run / "codes.npz", "run file"),
                                   (run / "metrics.json", "run file")], overwrite=True, kind="dir",
                     what="evaluation folder")
    _lock(dest, "stvh eval", flag=None if dest.resolve() == run.resolve() else "--out")
    codes = dest / "codes.npz"
    if data is not None or features is not None or skip_bad or not codes.exists():
        check_output_of_encode(run, codes, data, features, overwrite=True)
        r = encode(run, codes, data=data, features=features, skip_bad=skip_bad,
                   log=lambda line: typer.echo(line, err=True),
                   before_write=lambda cs: check_eval_splits(cs.split, data or run))  # nothing written if refused
        if skip_bad:
            _write_skipped_note(r["skipped"], skipped_path(codes))
    result = evaluate(codes, dest)
    m = result["metrics"]
    if as_json:
        typer.echo(json.dumps(m, indent=2, sort_keys=True))
        return
    typer.echo(format_headline(m, result["details"]))
    typer.echo(f"metrics written to {dest / 'metrics.json'}")


@app.command("ablate", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@friendly_errors
def ablate_cmd(
    ctx: typer.Context,
    data: Path = typer.Option(..., "--data", help="Dataset folder (every row and seed trains on it)."),
    table: int = typer.Option(..., "--table", min=5, max=7, help="The paper's table: 5 (MSF vs transformer BD/ED), "
                                                                  "6 (depth 2-5) or 7 (loss terms)."),
    out: Path = typer.Option(..., "--out", help="Ablation folder (resumes; may hold all three tables)."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML config every row starts from (default: the "
                                                               "shipped src/stvh/configs/default.yaml)."),
    seeds: str = typer.Option("0,1,2", "--seeds", help="Comma-separated seeds; each row runs once per seed."),
    features: Optional[Path] = typer.Option(None, "--features", help="Feature cache (default: extracted once "
                                                                     "into OUT/features for CNN backbones)."),
    progress: bool = typer.Option(True, help="Show a progress bar over the runs."),
):
    """Run one of the paper's ablation tables over seeds and write OUT/table{N}.md/.json beside the paper's figures.

    Extra key=value arguments override config keys for every row (e.g. train.epochs=10).
    """
    from .train.ablate import parse_seeds, run_table
    from .train.config import config_path, fitted_defaults
    from .train.loop import TrainingInterrupted

    try:
        result = run_table(table, data=data, out=out, config=config_path(config), seeds=parse_seeds(seeds), features=features,
                           overrides=[*ctx.args, *fitted_defaults(config, ctx.args)[0]], progress=progress and sys.stderr.isatty(),
                           echo=lambda line: typer.echo(line, err=True))
    except (KeyboardInterrupt, TrainingInterrupted):
        typer.secho(f"interrupted; finished runs and saved epochs are kept in {out}; run the same command again "
                    "to resume", fg=typer.colors.YELLOW, err=True)
        raise typer.Exit(130)
    typer.echo(result["markdown"])


index_app = typer.Typer(help="Hamming indexes of codes: build, then `stvh search`.", no_args_is_help=True)
app.add_typer(index_app, name="index")


@index_app.command("build")
@friendly_errors
def index_build(
    codes: Path = typer.Option(..., "--codes", help="CODES file written by `stvh encode`."),
    out: Path = typer.Option(..., "--out", help="Index file to write."),
    mode: str = typer.Option("all", help="all: every depth's code; compact: deepest code + filter matrix F."),
    backend: str = typer.Option("faiss", help="faiss (exact, auto fast path for short codes) | numpy | milvus."),
    uri: Optional[str] = typer.Option(None, help="Milvus URI: a local .db file (Milvus Lite) or http://host:port."),
    collection: Optional[str] = typer.Option(None, help="Milvus collection name."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out file."),
):
    """Build a search index from a CODES file."""
    from .index.commands import build_index
    from .outputs import os_error_message

    try:
        summary = build_index(codes, out, mode=mode, backend=backend, uri=uri, collection=collection,
                              overwrite=overwrite)
    except OSError as exc:  # permission, disk full, read-only file system: one line naming the file
        if isinstance(exc, ConnectionError):
            raise
        _fail(os_error_message(exc))
    typer.echo(json.dumps(summary, indent=2, default=str) if as_json else
               "\n".join(f"{k}: {v}" for k, v in summary.items()))


@app.command("search")
@friendly_errors
def search_cmd(
    index: Path = typer.Option(..., "--index", help="Index file from `stvh index build`."),
    clip: Optional[str] = typer.Option(None, "--clip", help="Query by an indexed clip id VIDEO/CLIP."),
    codes_file: Optional[Path] = typer.Option(None, "--codes-file", help="Query codes: CODES .npz, .npy or 0/1 text."),
    focus: Optional[int] = typer.Option(None, "--focus", help="Depth tau to search (1 = visual ... deepest = activity)."),
    k: int = typer.Option(10, "-k", "--k", help="Results per query."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON rows."),
):
    """Top-k clips by Hamming distance at a focus depth (the text output ends with time and memory)."""
    from .index.commands import format_results, format_stats, search_index
    from .outputs import os_error_message

    if (clip is None) == (codes_file is None):
        _fail("give exactly one of --clip or --codes-file")
    stats: dict = {}
    try:  # k < 1 and a focus outside 1..depth are ValueErrors of search_index: one line, exit 2
        rows = search_index(index, clip_id=clip, codes_file=codes_file, focus=focus, k=k, stats=stats)
    except OSError as exc:  # e.g. an index file the user may not read
        if isinstance(exc, ConnectionError):
            raise
        _fail(os_error_message(exc))
    # --json prints the rows alone (a JSON list); the text table gets one more line: time and memory
    typer.echo(json.dumps(rows, indent=2, default=str) if as_json else format_results(rows) + "\n" +
               format_stats(stats))


@app.command("report")
@friendly_errors
def report_cmd(
    run: Path = typer.Option(..., "--run", help="Run folder (after `stvh eval`)."),
    out: Optional[Path] = typer.Option(None, "--out", help="HTML file (default RUN/report.html, rewritten each "
                                                           "time)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out file."),
):
    """Write one self-contained HTML page with the paper's figures for a run."""
    from .eval.report import write_report
    from .outputs import check_output

    if out is not None:  # the default RUN/report.html is the run's own view and is refreshed
        inputs = [(run / n, "run file") for n in ("best.pt", "last.pt", "run.json", "config.yaml", "codes.npz",
                                                  "metrics.json", "metrics.csv")]
        check_output(out, inputs=inputs, overwrite=overwrite, allow_inside=[run], what="report")
    path = write_report(run, out)
    typer.echo(f"report written to {path}")


config_app = typer.Typer(help="Configs: print the one a command would run with.", no_args_is_help=True)
app.add_typer(config_app, name="config")


@config_app.command("show", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@friendly_errors
def config_show(
    ctx: typer.Context,
    config: Optional[Path] = typer.Option(None, "--config", help="YAML config (default: the shipped default)."),
    features: Optional[Path] = typer.Option(None, "--features", help="Feature cache: show what `stvh train "
                                                                     "--features` takes from it."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of YAML."),
):
    """Print the resolved config (file or shipped default, then key=value overrides, then the cache's settings).

    This is exactly what `stvh extract` / `stvh train` with the same --config, overrides and --features run with.
    """
    from .train.config import config_path, dump_config, resolve_config

    cfg, notes = resolve_config(config, list(ctx.args), features)
    if as_json:
        typer.echo(json.dumps(cfg, indent=2))
        return
    typer.echo(f"# resolved from {config_path(config)}" + (" (the shipped default)" if config is None else "")
               + "".join(f"\n# override: {o}" for o in ctx.args) + "".join(f"\n# {n}" for n in notes))
    typer.echo(dump_config(cfg).rstrip())


@app.command("demo", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@friendly_errors
def demo(
    ctx: typer.Context,
    out: Path = typer.Option(Path("runs/demo"), help="Folder for everything the demo writes (resumes)."),
    seed: int = typer.Option(0, help="Random seed (data, initialisation, shuffling)."),
    data: Optional[Path] = typer.Option(None, "--data", help="Your dataset (any supported format, e.g. MOT footage) "
                                                             "instead of the synthetic one."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML config instead of the synthetic one."),
    progress: bool = typer.Option(True, help="Show progress bars."),
):
    """The main job in one line: data, features, M-STVH, eval, report, index, a sample query.

    By default on the embedded synthetic data; --data runs the same stages on yours. Extra key=value
    arguments override config keys (e.g. train.epochs=5).
    """
    from .demo import run_demo

    if data is not None:
        from .outputs import check_output
        check_output(out, inputs=[(data, "dataset"), (config, "config")], overwrite=True, kind="dir")
    run_demo(out, seed=seed, progress=progress and sys.stderr.isatty(), echo=typer.echo,
             overrides=tuple(ctx.args), data=data, config=config)


@app.command("serve")
@friendly_errors
def serve_cmd(
    run: Path = typer.Option(..., "--run", help="Run folder made by `stvh train` (the model encodes uploads)."),
    index: Path = typer.Option(..., "--index", help="Index file from `stvh index build` (in-memory backends)."),
    data: Optional[Path] = typer.Option(None, "--data", help="Dataset of the indexed clips (default: the run's)."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(8000, help="Port."),
    allow_writes: bool = typer.Option(False, "--allow-writes", help="Allow POST/DELETE /api/clips (saves the index)."),
    uploads: Optional[Path] = typer.Option(None, help="Folder of added clips (default INDEX.uploads)."),
    max_upload_mb: int = typer.Option(64, help="Largest request body, MiB."),
    max_frames: int = typer.Option(600, help="Most frames in an uploaded video or zip."),
    max_persons: int = typer.Option(64, help="Most distinct track ids in an uploaded tracks file."),
    max_frame_mp: float = typer.Option(8.3, help="Most megapixels in one uploaded frame (8.3: a 4K UHD frame); "
                                                 "read from headers before decoding."),
    max_upload_mp: float = typer.Option(1250.0, help="Most megapixels in all the frames of one upload (1250: "
                                                     "600 frames of 1080p)."),
    token: Optional[str] = typer.Option(None, envvar="STVH_SERVE_TOKEN", help="Write token (Authorization: Bearer "
                                        "TOKEN) for clients of other origins; default: a new one, printed at start."),
    allowed_host: list[str] = typer.Option([], "--allowed-host", metavar="NAME", help="Another name the Host "
                                           "header may give (repeatable; '*' any); IP addresses, localhost and "
                                           "--host are always taken."),
    checkpoint: str = typer.Option("best", help="best or last."),
    device: str = typer.Option("cpu", help="cpu, cuda or cuda:N."),
    watch: Optional[Path] = typer.Option(None, "--watch", metavar="DIR", help="Ingest new footage of this MOT-layout "
                                         "folder into the index while serving (docs/live.md)."),
    poll: float = typer.Option(0.5, "--poll", help="--watch: seconds between scans of DIR."),
    settle: float = typer.Option(1.0, "--settle", help="--watch: seconds a video's files must stay unchanged."),
    detector: Optional[str] = typer.Option(None, "--detector", help="--watch: track footage that comes without tracks: "
                                           "FILE.onnx or hog (stvh track's defaults; docs/live.md)."),
    region: Optional[str] = typer.Option(None, "--region", help="--detector: keep boxes whose foot point is inside "
                                         "x1,y1,x2,y2 or a polygon file (as stvh track)."),
    track_config: Optional[Path] = typer.Option(None, "--track-config", metavar="FILE", help="--watch: track "
                                                "footage without tracks as this file says (the track.yaml `stvh "
                                                "track` writes; --detector/--region win over it)."),
):
    """Serve the search page and the HTTP API (search by clip or upload, with a focus from visual to activity)."""
    from .serve import ServeSettings, UploadLimits, serve
    from .train.checkpoint import CheckpointError
    from .train.loop import check_device

    check_device(device)
    for flag, value in (("--max-frame-mp", max_frame_mp), ("--max-upload-mp", max_upload_mp)):
        if not value > 0:
            _fail(f"{flag} must be a positive number of megapixels, got {value}")
    limits = UploadLimits(max_bytes=max_upload_mb * 1024 * 1024, max_frames=max_frames, max_persons=max_persons,
                          max_frame_pixels=max(1, int(max_frame_mp * 1e6)),
                          max_upload_pixels=max(1, int(max_upload_mp * 1e6)))
    if watch is not None:  # the index is written while serving: one writer (stvh.locks)
        if not watch.is_dir():
            _fail(f"--watch {watch} is not a folder (a MOT-layout folder: tracks/NAME.txt + videos/ or frames/)")
        _lock(index, "stvh serve --watch", flag="--index")
    elif detector is not None or region is not None or track_config is not None:
        _fail("--detector, --region and --track-config go with --watch DIR")
    try:
        serve(ServeSettings(run=run, index=index, data=data, host=host, port=port, allow_writes=allow_writes,
                            uploads=uploads, checkpoint=checkpoint, device=device, limits=limits, token=token,
                            allowed_hosts=tuple(allowed_host), watch=watch, watch_poll=poll, watch_settle=settle,
                            detector=detector, region=region, track_config=track_config),
              echo=typer.echo)
    except CheckpointError as exc:
        _fail(str(exc))


@app.command("track")
@friendly_errors
def track_cmd(
    videos: list[Path] = typer.Argument(..., help="Videos (.mp4/.avi/.mkv/.mov) or folders of numbered images."),
    detector: str = typer.Option(..., "--detector", help="A person detector: FILE.onnx (YOLOv5/v8/v11 or "
                                                         "x1,y1,x2,y2,score,class rows) or hog (OpenCV, weak)."),
    out: Path = typer.Option(..., "--out", help="MOT dataset folder to write (videos/, tracks/, clips.csv)."),
    layout: str = typer.Option("auto", help="Output layout: auto, yolov8, yolov5 or xyxy."),
    person_class: Optional[int] = typer.Option(None, help="Person class index (default: 'person' in the model's "
                                                          "names, else 0)."),
    score: Optional[float] = typer.Option(None, help="Score threshold (default 0.25; hog: 0, an SVM margin)."),
    iou: float = typer.Option(0.45, help="NMS IoU threshold (class-wise)."),
    imgsz: Optional[str] = typer.Option(None, help="Model input HxW or N when the model's input is dynamic and "
                                                    "its metadata gives no imgsz."),
    channels: Optional[str] = typer.Option(None, help="Channel order the model takes: rgb or bgr (default: the "
                                                      "model's metadata, else rgb)."),
    mean: Optional[str] = typer.Option(None, help="Per-channel mean a,b,c subtracted after scaling to 0-1 "
                                                  "(default: the model's metadata, else 0,0,0)."),
    std: Optional[str] = typer.Option(None, help="Per-channel std a,b,c divided by after the mean (default: "
                                                 "the model's metadata, else 1,1,1)."),
    letterbox: bool = typer.Option(True, help="Letterbox (keep aspect, pad 114); --no-letterbox stretches."),
    region: Optional[str] = typer.Option(None, help="Keep boxes whose foot point is inside: x1,y1,x2,y2 or a file "
                                                    "of polygon points (JSON [[x,y],...] or one x,y per line)."),
    max_gap: int = typer.Option(10, help="Fill gaps of up to this many frames in a track (linear)."),
    min_track_len: int = typer.Option(5, help="Drop tracks with fewer boxes than this."),
    frames_per_clip: int = typer.Option(10, help="Clip window length in frames (clips.csv); never crosses a cut."),
    scene_threshold: float = typer.Option(27.0, help="PySceneDetect ContentDetector threshold; 0 turns cuts off."),
    min_scene_len: int = typer.Option(15, help="Fewest frames of a scene."),
    lost_frames: int = typer.Option(10, help="Frames a lost track waits to be found again (ByteTrack)."),
    activation: float = typer.Option(0.5, help="Lowest score that starts a track (ByteTrack)."),
    match_iou: float = typer.Option(0.1, help="Lowest IoU of a box with a track's prediction (ByteTrack)."),
    min_hits: int = typer.Option(1, help="Hits before a track counts (ByteTrack)."),
    threads: int = typer.Option(0, help="onnxruntime threads (0: its default)."),
    overwrite: bool = typer.Option(False, "--overwrite", "--force", help="Write into a non-empty --out folder (same-"
                                                                         "named videos are replaced)."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
):
    """Detect and track people in videos with a detector you bring; write a MOT dataset (docs/live.md)."""
    from pydantic import ValidationError

    from .outputs import check_output
    from .track import track_video
    from .track.settings import TrackSettings

    def triple(text: Optional[str], flag: str) -> Optional[tuple[float, float, float]]:
        if text is None:
            return None
        try:
            a, b, c = (float(v) for v in text.split(","))
        except ValueError:
            raise typer.BadParameter(f"{flag} expects three numbers a,b,c, got {text!r}") from None
        return a, b, c

    size = None
    if imgsz:
        size = _parse_size(imgsz) if "x" in imgsz.lower() else (int(imgsz), int(imgsz)) if imgsz.isdigit() else None
        if size is None:
            raise typer.BadParameter(f"--imgsz expects HxW or N, got {imgsz!r}")
    names = [v.name if v.is_dir() else v.stem for v in videos]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        _fail(f"two inputs have the video name {twice[0]!r}; rename one (the dataset keys videos by name)")
    for v in videos:
        if not v.exists():
            _fail(f"{v}: video not found")
    try:  # one validated record of every flag (also written to OUT/track.yaml for ingest / serve --watch)
        settings = TrackSettings(detector=detector, layout=layout, person_class=person_class, score=score, iou=iou,
                                 imgsz=size, channels=channels, mean=triple(mean, "--mean"), std=triple(std, "--std"),
                                 letterbox=letterbox, threads=threads, region=region, max_gap=max_gap,
                                 min_track_len=min_track_len, frames_per_clip=frames_per_clip,
                                 scene_threshold=scene_threshold, min_scene_len=min_scene_len,
                                 lost_frames=lost_frames, activation=activation, match_iou=match_iou,
                                 min_hits=min_hits)
    except ValidationError as e:
        err = e.errors()[0]
        flag = "--" + str(err["loc"][0]).replace("_", "-") if err["loc"] else "an option"
        raise typer.BadParameter(f"{flag}: {err['msg']}") from None
    det, opts = settings.build(progress=progress)
    check_output(out, inputs=[(v, "video") for v in videos] + [(detector, "detector") if detector != "hog" else None],
                 overwrite=overwrite, kind="dir", what="MOT dataset")
    _lock(out, "stvh track")
    summaries = []
    for v in videos:
        s = track_video(v, out, det, opts)
        if not s["written"]:
            typer.echo(f"note: {v}: nothing written ({s['why_not_written']})", err=True)
        summaries.append(s)
    settings.save(out / "track.yaml")
    typer.echo(json.dumps({"out": str(out), "detector": det.name, "videos": summaries,
                           "settings": str(out / "track.yaml")}, indent=2))


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    app()
