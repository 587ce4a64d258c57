"""Run configuration: a YAML file, defaults for every key, dotted overrides.

``load_config("configs/volleyball.yaml", ["model.bits=64", "train.epochs=5"])``
returns a plain nested dict. Override values are parsed as YAML scalars
(``1e-5`` → float, ``[11, 21]`` → list, ``none`` → None). Every key is typed
and checked by the pydantic models below (:class:`Config`); a bad key or value
raises :class:`ConfigError` with ONE line naming the key, the value and what is
allowed, prefixed by ``file:line`` when the value came from a file::

    configs/x.yaml:7: config key 'train.epochs': got 'ten'; expected an integer >= 1

Unknown keys are errors, so a typo never silently does nothing. The option
sections ``data.reader`` and ``synth`` are checked against the keyword
parameters (names and annotated types) of the reader of ``data.format`` and of
:func:`stvh.data.synth.generate`. Why pydantic: docs/pipeline.md, "Configuration".
"""

from __future__ import annotations

import copy
import functools
import inspect
import re
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import yaml
from pydantic import (AfterValidator, AllowInfNan, BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer,
                      Strict, TypeAdapter, ValidationError, ValidationInfo, field_validator, model_validator)

from ..data.formats import FORMATS
from ..models import list_models
from ..models.heads import POOLINGS  # HashHead(pooling=...)
from ..models.tracks import TRACKS  # clean_tracks(mode=...)
from ..models.visual import GEOMETRY_UNITS, backbone_names  # box_geometry_features(units=...)

SELECT = ("val_map@10", "val_mca", "val_both")  # train.select: model-selection scores of train/loop.py
HASH_NORMS = ("layer", "none")              # models/heads.py HashHead(norm=...)
RECON_FROM = ("block", "code")              # models/mstvh.py MSTVH(recon_from=...)
BACKBONES = ("none", *backbone_names())    # models/visual.py; "none" = box geometry only
BITS = (16, 32, 64, 128)                    # K of the paper (Sec. 6.1.2)
DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:[0-9]+)?)$")


class ConfigError(ValueError):
    """A bad config file, override or value; ``errors`` lists one line per bad key."""

    def __init__(self, message: str, errors: list[str] | None = None):
        super().__init__(message)
        self.errors = errors or [message]


# ---- option sections checked against function signatures (data.reader, synth), devices ----

class BadKey(ValueError):
    """Raised inside a validator: ``key`` (relative to the model being validated) and the text after it."""

    def __init__(self, key: str, text: str):
        super().__init__(text)
        self.key, self.text = key, text


def _strict(tp):
    """``tp`` with strict leaves (no bool->int, no text->number, finite floats); lists still fill tuples."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        return Union[tuple(_strict(a) for a in args)]
    if origin in (tuple, list):
        inner = tuple(a if a is Ellipsis else _strict(a) for a in args)
        return origin[inner] if inner else origin
    if tp is bool or tp is int:
        return Annotated[tp, Strict()]
    if tp is float:
        return Annotated[float, Strict(), AllowInfNan(False)]
    if tp is str or tp is Path:  # names: YAML reads `videos: [4, 7]` as numbers
        return Union[Annotated[str, Strict()], Annotated[int, Strict()]]
    return tp


def _signature_options(fn, exclude: tuple[str, ...]) -> dict[str, tuple[TypeAdapter, str]]:
    """``{keyword: (adapter of its annotation, annotation text)}`` of ``fn``'s parameters."""
    hints = typing.get_type_hints(fn)
    out = {}
    for name, p in inspect.signature(fn).parameters.items():
        if name in exclude or p.kind not in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD):
            continue
        text = p.annotation if isinstance(p.annotation, str) else getattr(p.annotation, "__name__", str(p.annotation))
        text = re.sub(r"\bfloat\b", "finite float", text)
        out[name] = (TypeAdapter(_strict(hints.get(name, Any))), f"{text} ({fn.__name__}'s {name!r})")
    return out


def _readers() -> dict:
    from ..data.cad import read_cad
    from ..data.mot import read_mot
    from ..data.volleyball import read_volleyball
    return {"volleyball": read_volleyball, "cad": read_cad, "caed": read_cad, "mot": read_mot}


READER_EXCLUDE = ("root", "skip_bad", "variant")  # variant is set by data.format; skip_bad by the CLI
SYNTH_EXCLUDE = ("out", "progress", "overwrite", "seed")  # seed is the config's seed


@functools.lru_cache(maxsize=None)
def reader_options(fmt: str | None) -> dict[str, list[tuple[TypeAdapter, str]]]:
    """Options of the reader of ``fmt`` (of any reader when None): ``{name: [(adapter, text), ...]}``."""
    readers = _readers()
    out: dict[str, list] = {}
    for name in ([fmt] if fmt else FORMATS):
        for key, opt in _signature_options(readers[name], READER_EXCLUDE).items():
            if opt[1] not in [o[1] for o in out.get(key, [])]:
                out.setdefault(key, []).append(opt)
    return out


@functools.lru_cache(maxsize=None)
def synth_options() -> dict[str, list[tuple[TypeAdapter, str]]]:
    from ..data.synth import generate
    return {k: [v] for k, v in _signature_options(generate, SYNTH_EXCLUDE).items()}


def check_options(values: dict, options: dict, prefix: str, what: str) -> None:
    """Raise :class:`BadKey` for the first key of ``values`` unknown to ``options`` or of the wrong type."""
    for key, value in values.items():
        if key not in options:
            raise BadKey(f"{prefix}.{key}", f"unknown option of {what}; known: {', '.join(sorted(options))}")
        errors = []
        for adapter, text in options[key]:
            try:
                adapter.validate_python(value)
                break
            except ValidationError:
                errors.append(text)
        else:
            raise BadKey(f"{prefix}.{key}", f"got {_short(value)}; expected {' or '.join(errors)}")
    if prefix == "synth":
        _check_synth_ranges(values)


def _check_synth_ranges(values: dict) -> None:
    """The generator's own range checks (e.g. frames in 2..100), run at config time."""
    from ..data.synth import SynthConfig
    knobs = dict(values)
    if "size" in knobs:
        knobs["size"] = tuple(knobs["size"])
    try:
        SynthConfig(**knobs).validate()
    except ValueError as exc:
        name = str(exc).split()[0]
        key = f"synth.{name}" if name in values else "synth"
        raise BadKey(key, _one_line(exc)) from None


def devices_here() -> list[str]:
    """Device names usable on this machine: auto, cpu, cuda and cuda:N when CUDA is there, mps when MPS is."""
    import torch
    out = ["auto", "cpu"]
    if torch.cuda.is_available():
        out += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        out.append("mps")
    return out


# ---- typed building blocks (strict: True is not 1, "3" is not 3, 2.0 is not an epoch count) ----

def _one_of(choices) -> str:
    return "one of " + ", ".join(str(c) for c in choices)


def _choice(choices: tuple):
    return Literal[choices]  # Literal[("a", "b")] == Literal["a", "b"]


def _null_is_none(v):
    return "none" if v is None else v  # `model.backbone=none` parses as null; for these keys it is "none"


def _ordered(v: tuple) -> tuple:
    if v[0] > v[1]:
        raise ValueError("first > last")
    return v


Int = Annotated[int, Strict()]  # strict: no bools, no text, no 2.0; strict floats still take ints (1 -> 1.0)
PosInt = Annotated[int, Strict(), Field(ge=1)]
NonNegInt = Annotated[int, Strict(), Field(ge=0)]
PosFloat = Annotated[float, Strict(), Field(gt=0)]
NonNegFloat = Annotated[float, Strict(), Field(ge=0)]
Fraction = Annotated[float, Strict(), Field(ge=0, lt=1)]
NoneWord = BeforeValidator(_null_is_none)
AsList = PlainSerializer(list)  # tuples are dumped as lists: YAML and dump_config want plain lists
LrStep = Annotated[tuple[PosInt, PosFloat], AsList]
Window = Annotated[tuple[Int, Int], AfterValidator(_ordered), AsList]
FrameSize = Annotated[tuple[PosInt, PosInt], AsList]


def _field(default, expected: str, **kw):
    """A config field; ``expected`` completes the error "got X; expected ..." (and is its JSON-schema text)."""
    if isinstance(default, (list, dict)):
        return Field(default_factory=lambda: copy.deepcopy(default), description=expected, **kw)
    return Field(default, description=expected, **kw)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


# ---- the sections: one line per key, in the order of the dumped config ----

class DataConfig(_Section):
    format: Optional[_choice(FORMATS)] = _field(None, _one_of(FORMATS) + " or null (detected)")
    n_max: Optional[PosInt] = _field(None, "an integer >= 1 or null (reader default)")
    window: Optional[Window] = _field(None, "[first, last] frame offsets (integers, first <= last) or null")
    val_fraction: Fraction = _field(0.15, "a number in [0, 1)")
    reader: dict[str, Any] = _field({}, "a mapping of reader options")
    require_features: Annotated[bool, Strict()] = _field(False, "true (refuse clips without cached features) or false (leave them out)")
    unlisted: _choice(("ignore", "train")) = _field("ignore", "ignore (clips in no split stay out of training) or "
                                                              "train (they join the train split)")
    train_per_class: Optional[PosInt] = _field(None, "an integer >= 1 (at most that many train clips of each "
                                                     "activity, for learning curves) or null (all)")

    @model_validator(mode="after")
    def _reader_options(self):
        what = f"the {self.format} reader" if self.format else "any reader"
        check_options(self.reader, reader_options(self.format), "reader", what)
        return self


class ModelConfig(_Section):
    name: _choice(tuple(list_models())) = _field("mstvh", _one_of(list_models()))
    bits: _choice(BITS) = _field(128, _one_of(BITS))
    depth: PosInt = _field(3, "an integer >= 1")
    d: PosInt = _field(1024, "an integer >= 1")
    d_v: PosInt = _field(512, "an integer >= 1")
    heads: PosInt = _field(8, "an integer >= 1")
    dropout: Fraction = _field(0.1, "a number in [0, 1)")
    backbone: Annotated[_choice(BACKBONES), NoneWord] = _field("none", _one_of(BACKBONES))
    weights: Optional[Annotated[str, Strict()]] = _field(None, "a file path or null")
    train_backbone: Annotated[bool, Strict()] = _field(False, "true or false")
    geometry: Annotated[bool, Strict()] = _field(False, "true or false")
    hash_norm: Annotated[_choice(HASH_NORMS), NoneWord] = _field("layer", _one_of(HASH_NORMS))
    recon_from: _choice(RECON_FROM) = _field("block", _one_of(RECON_FROM))
    pooling: _choice(POOLINGS) = _field("paper", _one_of(POOLINGS) + " (paper = Eq. 5's AVG; docs/model.md)")
    tracks: _choice(TRACKS) = _field("raw", _one_of(TRACKS) + " (raw = the annotated boxes; docs/model.md)")
    shared_bits: NonNegInt = _field(0, "an integer >= 0 and < model.bits (deepest code's bits copied from the "
                                       "shallowest; 0 = the paper)")
    geometry_units: _choice(GEOMETRY_UNITS) = _field("image", _one_of(GEOMETRY_UNITS) + " (motion features' unit)")
    shared_bits_middle: NonNegInt = _field(0, "an integer >= 0 and < model.bits (bits of the shallowest code "
                                              "copied into each middle depth's; 0 = the paper)")

    @model_validator(mode="after")
    def _heads_divide_d(self):
        if self.d % self.heads:
            raise BadKey("d", f"got {self.d}; expected a multiple of model.heads = {self.heads}")
        if self.shared_bits and (self.shared_bits >= self.bits or self.depth < 2):
            raise BadKey("shared_bits", f"got {self.shared_bits}; expected fewer than model.bits = {self.bits}, "
                                        f"with model.depth >= 2 (it is {self.depth})")
        if self.shared_bits_middle and (self.shared_bits_middle >= self.bits or self.depth < 3):
            raise BadKey("shared_bits_middle", f"got {self.shared_bits_middle}; expected fewer than model.bits = "
                                               f"{self.bits}, with model.depth >= 3 (it is {self.depth})")
        return self


class LossConfig(_Section):
    """Loss weights: Eq. 9 (STVH) and Eq. 15 (M-STVH)."""

    acty: NonNegFloat = _field(1.0, "a number >= 0")
    action: NonNegFloat = _field(0.5, "a number >= 0")
    quant: NonNegFloat = _field(0.1, "a number >= 0 (lambda1 / mu1 of Eq. 9 / 15)")
    contrast: NonNegFloat = _field(0.5, "a number >= 0 (lambda2 / mu2 of Eq. 9 / 15)")
    recon: Optional[NonNegFloat] = _field(None, "a number >= 0 or null (mu3 of Eq. 15; null = 0.01 for M-STVH)")
    layer_weights: Optional[list[NonNegFloat]] = _field(None, "a list of numbers >= 0, one per depth, or null "
                                                              "(w_tau of Eq. 14)")
    filter: NonNegFloat = _field(0.0, "a number >= 0 (F of Eq. 16-17 trained with the model; 0 = fitted after)")
    visual: NonNegFloat = _field(0.0, "a number >= 0 (same-video contrast on the shallowest code, trained with "
                                      "the video id; 0 = the paper)")
    side: NonNegFloat = _field(0.0, "a number >= 0 (court-side cross-entropy of the deepest activity head, "
                                    "l_* vs r_*; 0 = the paper)")


class AugmentConfig(_Section):
    """Training-time augmentation (train/augment.py); all 0 = the paper's setting."""

    flip: Fraction = _field(0.0, "a probability in [0, 1) (mirror a clip, swapping l_/r_ labels)")
    jitter: NonNegFloat = _field(0.0, "a number >= 0 (box noise std, fraction of the box size)")
    pan: NonNegFloat = _field(0.0, "a number >= 0 (camera travel, fraction of the image width)")
    drop: Fraction = _field(0.0, "a probability in [0, 1) (remove a person)")


class TrainConfig(_Section):
    epochs: PosInt = _field(60, "an integer >= 1")
    batch_size: PosInt = _field(8, "an integer >= 1")
    lr: PosFloat = _field(1.0e-5, "a number > 0")
    weight_decay: NonNegFloat = _field(0.0, "a number >= 0")
    lr_steps: list[LrStep] = _field([], "a list of [epoch >= 1, lr > 0] pairs")
    grad_clip: NonNegFloat = _field(5.0, "a number >= 0 (0 = off)")
    select: _choice(SELECT) = _field("val_map@10", _one_of(SELECT))
    device: Annotated[str, Strict()] = _field("auto", "auto, cpu, cuda, cuda:N or mps")
    log_every: NonNegInt = _field(0, "an integer >= 0 (0 = off)")
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    steps: Optional[PosInt] = _field(None, "an integer >= 1 (optimizer steps: the run's epochs and lr_steps are "
                                           "scaled to make about that many) or null (train.epochs)")
    patience: Optional[PosInt] = _field(None, "an integer >= 1 (epochs without a gain of the selection score "
                                              "before the next lr_steps stage, then the stop) or null (off)")
    steps_per_video: Optional[PosInt] = _field(None, "an integer >= 1 (train.steps is raised to this many steps "
                                                     "per video of the training clips) or null (off)")

    @field_validator("device")
    @classmethod
    def _device_here(cls, v: str, info: ValidationInfo) -> str:
        if not DEVICE_RE.match(v):
            raise BadKey("", f"got {v!r}; expected auto, cpu, cuda, cuda:N or mps")
        if (info.context or {}).get("check_device", True) and v not in devices_here():
            raise BadKey("", f"got {v!r}; that device is not present on this machine "
                             f"(devices here: {', '.join(devices_here())})")
        return v


class FilterConfig(_Section):
    """Fitting the filter matrix F of Sec. 5.4 (Eq. 16-17)."""

    steps: PosInt = _field(400, "an integer >= 1")
    lr: PosFloat = _field(0.01, "a number > 0")


class ExtractConfig(_Section):
    """Feature-cache options used by `stvh demo`."""

    frame_size: Optional[FrameSize] = _field(None, "[H, W] integers >= 1 or null")
    pca: Optional[PosInt] = _field(None, "an integer >= 1 or null")


class Config(_Section):
    seed: NonNegInt = _field(0, "an integer >= 0")
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    filter: FilterConfig = Field(default_factory=FilterConfig)
    extract: ExtractConfig = Field(default_factory=ExtractConfig)
    synth: dict[str, Any] = _field({}, "a mapping of generator options")

    @model_validator(mode="after")
    def _cross_checks(self):
        check_options(self.synth, synth_options(), "synth", "the synthetic generator")
        if self.model.name == "stvh":  # one code: nothing to share with or derive from
            for key, on in (("model.shared_bits", self.model.shared_bits), ("loss.filter", self.loss.filter),
                            ("model.shared_bits_middle", self.model.shared_bits_middle)):
                if on:
                    raise BadKey(key, f"got {on!r}; expected 0 for model.name = stvh (one code per clip; "
                                      "the option is for the M-STVH family)")
        lw = self.loss.layer_weights
        if lw is not None and len(lw) != self.model.depth:
            raise BadKey("loss.layer_weights", f"got {lw!r}; expected {self.model.depth} weights, "
                                               f"one per depth (model.depth = {self.model.depth})")
        return self


DEFAULTS: dict = Config().model_dump()
FREE_SECTIONS = ("data.reader", "synth")  # option mappings checked against a reader / the generator


def json_schema() -> dict:
    """JSON schema of a config file (types, choices, defaults and descriptions)."""
    return Config.model_json_schema()


# ---- YAML ----

class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-5`` (no dot) as a float, as YAML 1.2 does."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


class _OverrideLoader(_Loader):
    """Override values: also ``none`` / ``None`` read as null, as the docs promise."""


_OverrideLoader.add_implicit_resolver("tag:yaml.org,2002:null", re.compile(r"^(?:none|None|NONE)$"), list("nN"))


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _yaml_error(exc: Exception, where: str) -> ConfigError:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or exc
    if mark is not None and where:
        where = f"{where}:{mark.line + 1}"
    return ConfigError(f"{where}: invalid YAML: {_one_line(problem)}")


def _parse(text: str, where: str) -> tuple[Any, dict[str, int]]:
    """``(data, {dotted key: 1-based line})`` of a YAML document; duplicate keys are errors."""
    try:
        loader = _Loader(text)
        try:
            node = loader.get_single_node()
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except (yaml.YAMLError, RecursionError) as exc:
        raise _yaml_error(exc, where) from None
    problem = _shape_problem(data)
    if problem:
        raise ConfigError(f"{where}: invalid YAML: {problem}")
    lines: dict[str, int] = {}
    _key_lines(node, "", lines, where, set())
    return data, lines


MAX_NESTING = 32  # a config is a few levels deep; deeper (or cyclic) YAML values are refused before any recursion


def _shape_problem(value: Any, parents: tuple[int, ...] = (), done: set | None = None) -> str | None:
    """Why a YAML value can never be a config: it contains itself (``&a [*a]``) or is nested too deep; else None."""
    done = set() if done is None else done
    if not isinstance(value, (dict, list)) or id(value) in done:
        return None
    if id(value) in parents:
        return "an alias refers to its own anchor (a cycle)"
    if len(parents) >= MAX_NESTING:
        return f"values nested more than {MAX_NESTING} levels deep"
    for item in (value.values() if isinstance(value, dict) else value):
        problem = _shape_problem(item, (*parents, id(value)), done)
        if problem:
            return problem
    done.add(id(value))  # shared (aliased) values are walked once
    return None


def _key_lines(node, prefix: str, lines: dict[str, int], where: str, seen: set) -> None:
    if not isinstance(node, yaml.MappingNode) or id(node) in seen:
        return
    seen.add(id(node))
    for knode, vnode in node.value:
        if not isinstance(knode, yaml.ScalarNode):
            continue
        key, line = prefix + knode.value, knode.start_mark.line + 1
        if key in lines:
            raise ConfigError(f"{where}:{line}: duplicate config key {key!r} (first on line {lines[key]})")
        lines[key] = line
        _key_lines(vnode, key + ".", lines, where, seen)


def _read_text(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"config file {path}: cannot read it ({exc.strerror or exc})") from None
    if raw.startswith((b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff")):
        raise ConfigError(f"config file {path}: file is UTF-32; save it as UTF-8")
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ConfigError(f"config file {path}: file is UTF-16; save it as UTF-8")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: config file is not UTF-8 (byte 0x{raw[exc.start]:02x}); "
                          "save it as UTF-8") from None


# ---- merging with provenance ----

def _merge(base: dict, update: dict, where: str, origin: dict[str, str], source) -> None:
    """Merge ``update`` into ``base`` (mappings merge, anything else replaces); record where each key came from.

    Unknown keys and bad values are left for :class:`Config` to report.
    """
    for key, value in update.items():
        if not isinstance(key, str):
            raise ConfigError(f"{source(where + str(key))}config key {where + str(key)!r}: "
                              f"keys must be text, got {type(key).__name__} {key!r}")
        origin[where + key] = source(where + key)
        if isinstance(base.get(key), dict) and isinstance(value, dict):
            _merge(base[key], value, f"{where}{key}.", origin, source)
        else:
            base[key] = copy.deepcopy(value)
            if isinstance(value, dict):
                _merge({}, value, f"{where}{key}.", origin, source)  # record (and check) the nested keys


def _file_source(path: Path, lines: dict[str, int]):
    return lambda key: f"{path}:{lines[key]}: " if key in lines else f"{path}: "


def _override_source(key: str) -> str:
    return ""


def parse_override(text: str) -> dict:
    """``"a.b=3"`` → ``{"a": {"b": 3}}``; the value is read as YAML (``1e-5``, ``[11, 21]``, ``none``)."""
    shown = _short(text, 100)
    if "=" not in text:
        raise ConfigError(f"override {shown} must look like key.sub=value")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override {shown}: empty key part; use key.sub=value")
    if len(parts) > MAX_NESTING:
        raise ConfigError(f"override {shown}: key nested more than {MAX_NESTING} levels deep")
    if raw.strip():
        try:
            value = yaml.load(raw, Loader=_OverrideLoader)
        except (yaml.YAMLError, RecursionError) as exc:
            problem = _one_line(getattr(exc, "problem", None) or exc)
            raise ConfigError(f"override {shown}: invalid YAML value ({problem})") from None
        problem = _shape_problem(value)
        if problem:
            raise ConfigError(f"override {shown}: invalid YAML value ({problem})")
    else:
        value = None
    out: dict = {}
    node = out
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


# ---- validation ----

def _model_at(loc: tuple) -> tuple[list[str], Any, Any]:
    """Walk ``loc`` down the models: (field path, deepest field info or None, model class at the end or None)."""
    cls, info, path = Config, None, []
    for part in loc:
        if cls is None or part not in cls.model_fields:
            break
        path.append(part)
        info = cls.model_fields[part]
        ann = info.annotation
        cls = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
    return path, info, cls


def _lookup(raw: Any, key: list[str]) -> Any:
    for part in key:
        raw = raw.get(part) if isinstance(raw, dict) else None
    return raw


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _error_line(err: dict, raw: dict) -> tuple[str, str]:
    """(dotted key, message without provenance) of one pydantic error."""
    loc = tuple(err["loc"])
    path, info, cls = _model_at(loc)
    bad = (err.get("ctx") or {}).get("error")
    if isinstance(bad, BadKey):
        key = ".".join(path + ([bad.key] if bad.key else []))
        return key, f"config key {key!r}: {bad.text}"
    if err["type"] == "extra_forbidden":
        key = ".".join(path + [str(loc[len(path)])])
        known = ", ".join(sorted((cls or Config).model_fields))
        return key, f"unknown config key {key!r}; known: {known}"
    key = ".".join(path)
    if info is None:
        expected = "a mapping of the sections " + ", ".join(Config.model_fields)
    elif cls is not None:
        expected = "a mapping of " + ", ".join(cls.model_fields)
    else:
        expected = info.description
    return key, f"config key {key!r}: got {_short(_lookup(raw, path))}; expected {expected}"


def _validate(raw: dict, origin: dict[str, str], check_device: bool = True) -> dict:
    try:
        return Config.model_validate(raw, context={"check_device": check_device}).model_dump()
    except ValidationError as exc:
        lines: dict[str, str] = {}
        for err in exc.errors():
            key, text = _error_line(err, raw)
            if key not in lines:
                parts = key.split(".")
                src = next((origin[p] for p in (".".join(parts[:i]) for i in range(len(parts), 0, -1))
                            if p in origin), "")
                lines[key] = src + text
        errors = list(lines.values())
        more = f" (and {len(errors) - 1} more: {', '.join(map(repr, list(lines)[1:4]))})" if len(errors) > 1 else ""
        raise ConfigError(errors[0] + more, errors) from None


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """Defaults ← YAML file ← overrides, validated; returns a new nested dict."""
    cfg = copy.deepcopy(DEFAULTS)
    origin: dict[str, str] = {}
    if path is not None:
        path = Path(path)
        data, lines = _parse(_read_text(path), str(path))
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
        _merge(cfg, data, "", origin, _file_source(path, lines))
    for text in overrides:
        _merge(cfg, parse_override(text), "", origin, _override_source)
    return _validate(cfg, origin)


def complete_config(cfg: dict) -> dict:
    """Fill keys added since a run was saved with their defaults (old runs stay loadable), then validate.

    ``train.device`` is checked for its form only: the run may have been trained on another machine.
    """
    if not isinstance(cfg, dict):
        raise ConfigError(f"saved config: expected a mapping, got {type(cfg).__name__}")
    problem = _shape_problem(cfg)
    if problem:
        raise ConfigError(f"saved config: {problem}")
    merged = copy.deepcopy(DEFAULTS)
    origin: dict[str, str] = {}
    _merge(merged, cfg, "", origin, lambda key: "saved config: ")
    return _validate(merged, origin, check_device=False)


def dump_config(cfg: dict) -> str:
    return yaml.safe_dump(cfg, sort_keys=False)


# ---- the shipped default and what a feature cache implies ----

SHIPPED = Path(__file__).resolve().parents[1] / "configs"  # default.yaml and the demo's synthetic.yaml
DEFAULT_CONFIG = SHIPPED / "default.yaml"
# Keys a feature cache fixes, and how its meta.json states each (train/extract.py writes them).
CACHE_KEYS = ("model.backbone", "extract.frame_size", "extract.pca")


def config_path(path: str | Path | None) -> Path:
    """The config a command runs with: ``path``, else the shipped default (``src/stvh/configs/default.yaml``)."""
    return Path(path) if path is not None else DEFAULT_CONFIG


def is_shipped(path: str | Path | None) -> bool:
    """True for None (the default) and for the configs shipped inside the package (nobody's explicit choice)."""
    return path is None or Path(path).resolve().parent == SHIPPED


def user_keys(path: str | Path | None, overrides=()) -> dict[str, str]:
    """Dotted keys the user set, each with where (``file:line: `` or ``override key=value: ``); a shipped config's
    keys are nobody's explicit choice."""
    out: dict[str, str] = {}
    if not is_shipped(path):
        path = Path(path)
        _, lines = _parse(_read_text(path), str(path))
        out.update({key: f"{path}:{line}: " for key, line in lines.items()})
    def walk(value: Any, prefix: str, where: str) -> None:
        for key, sub in value.items():
            out[prefix + key] = where
            if isinstance(sub, dict):
                walk(sub, f"{prefix}{key}.", where)

    for text in overrides:
        walk(parse_override(text), "", f"override {_short(text, 60)}: ")
    return out


def stretch_layer_weights(weights: list[float], depth: int) -> list[float]:
    """Eq. 14's w_tau for another depth: the given shallow-to-deep profile, linearly resampled to ``depth``
    entries (the same list when the lengths agree)."""
    import numpy as np

    if len(weights) == depth:
        return list(weights)
    if len(weights) == 1:
        return [float(weights[0])] * depth
    if depth == 1:  # one code is the deepest, activity-focused one: it keeps the deepest weight
        return [float(weights[-1])]
    src = np.linspace(0.0, 1.0, len(weights))
    return [round(float(v), 6) for v in np.interp(np.linspace(0.0, 1.0, depth), src, weights)]


def fitted_defaults(path: str | Path | None, overrides=()) -> tuple[list[str], list[str]]:
    """Overrides that keep a shipped config valid under the user's ``model.bits`` / ``model.depth`` / ``model.name``.

    The shipped recipe sets keys that depend on others (``model.shared_bits`` 24 of 64 bits, three
    ``loss.layer_weights``, ``loss.filter`` for the M-STVH family). Where the user changes what they depend on
    and does not set them, they follow: shared bits scale with K (0 below depth 2 or for STVH), the layer weights
    are resampled to the depth, STVH gets no filter. Returns ``(overrides, notes)``; nothing for a user's file.
    """
    if not is_shipped(path):
        return [], []
    raw = copy.deepcopy(DEFAULTS)
    data, _ = _parse(_read_text(config_path(path)), str(config_path(path)))
    _merge(raw, data or {}, "", {}, _override_source)
    base = copy.deepcopy(raw)
    for text in overrides:
        _merge(raw, parse_override(text), "", {}, _override_source)
    explicit = user_keys(None, overrides)
    m, loss, out, notes = raw["model"], raw["loss"], [], []
    bits, depth, name = m.get("bits"), m.get("depth"), m.get("name")
    if not all(type(v) is int for v in (bits, depth, base["model"]["bits"])):
        return [], []  # the validation names the bad value

    def fit(key: str, value, why: str) -> None:
        if key not in explicit and _lookup(raw, key.split(".")) != value:
            out.append(f"{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}")
            notes.append(f"{key} = {value!r} ({why})")

    shared = m.get("shared_bits")
    if type(shared) is int and shared:
        scaled = 0 if name == "stvh" or depth < 2 else min(bits - 1, shared * bits // base["model"]["bits"])
        fit("model.shared_bits", scaled, f"the shipped config's {shared} of {base['model']['bits']} bits, "
                                         f"fitted to model.name = {name}, model.bits = {bits}, model.depth = {depth}")
    middle = m.get("shared_bits_middle")
    if type(middle) is int and middle:
        scaled = 0 if name == "stvh" or depth < 3 else min(bits - 1, middle * bits // base["model"]["bits"])
        fit("model.shared_bits_middle", scaled, f"the shipped config's {middle} of {base['model']['bits']} bits, "
                                                f"fitted to model.name = {name}, model.bits = {bits}, "
                                                f"model.depth = {depth}")
    for key in ("steps", "steps_per_video"):
        if raw.get("train", {}).get(key) is not None and "train.epochs" in explicit and f"train.{key}" not in explicit:
            fit(f"train.{key}", None, "train.epochs was given: the run lasts that many epochs")
    if loss.get("visual") and (name == "stvh" or depth < 2):
        fit("loss.visual", 0.0, "one code per clip is the activity code: no shallow code to train on the video id")
    if name == "stvh" and loss.get("filter"):
        fit("loss.filter", 0.0, "STVH has one code: no filter matrix to train")
    lw = loss.get("layer_weights")
    if isinstance(lw, list) and lw and depth >= 1 and len(lw) != depth:
        fit("loss.layer_weights", stretch_layer_weights(lw, depth), f"the shipped config's {lw} resampled to "
                                                                    f"model.depth = {depth}")
    return out, notes


def cache_settings(meta: dict) -> dict[str, Any]:
    """``{config key: value}`` that a feature cache's ``meta.json`` was extracted with (keys of :data:`CACHE_KEYS`)."""
    size, reduction = meta.get("frame_size"), str(meta.get("reduction", "none"))
    return {"model.backbone": meta.get("backbone"),
            "extract.frame_size": list(size) if isinstance(size, (list, tuple)) else None,
            "extract.pca": int(reduction[3:]) if reduction.startswith("pca") and reduction[3:].isdigit() else None}


def adopt_cache_settings(cfg: dict, meta: dict, explicit: dict[str, str], cache: str | Path) -> tuple[dict, list[str]]:
    """Take backbone, frame size and PCA from a cache where the user did not set them (issue: one set of defaults).

    A key the user set (in their file or an override) that disagrees with the cache is a :class:`ConfigError`
    naming both. Returns the validated config and one note per key taken from the cache.
    """
    out, notes = copy.deepcopy(cfg), []
    for key, have in cache_settings(meta).items():
        section, name = key.split(".")
        want = out[section][name]
        want = list(want) if isinstance(want, tuple) else want
        if want == have:
            continue
        where = explicit.get(key)
        if where is not None:
            shown = "null (the frames' own size)" if have is None and key == "extract.frame_size" else \
                "null (no PCA)" if have is None else repr(have)
            raise ConfigError(f"{where}config key {key!r} is {want!r} but the feature cache {cache} was extracted "
                              f"with {shown}; extract again with this config (stvh extract --config ...) or drop "
                              "the key to use the cache's")
        out[section][name] = have
        notes.append(f"{key} = {have!r} taken from the feature cache {cache} (the default config has {want!r})")
    return _validate(out, {}, check_device=True), notes


def resolve_config(path: str | Path | None, overrides=(), features: str | Path | None = None, *,
                   fitted_notes: bool = True) -> tuple[dict, list[str]]:
    """The config a command runs with: file or shipped default, then overrides (a shipped config's dependent keys
    fitted to them, :func:`fitted_defaults`), and with ``features`` the cache's backbone, frame size and PCA where
    the user did not set them. Returns ``(config, notes)``; ``fitted_notes=False`` leaves the fitted keys' notes out
    (commands print only what came from the cache: the fitted values are in the run's config.yaml)."""
    fitted, notes = fitted_defaults(path, overrides)
    notes = notes if fitted_notes else []
    cfg = load_config(config_path(path), [*overrides, *fitted])
    if features is None:
        return cfg, notes
    from ..data.feature_cache import read_meta
    cfg, taken = adopt_cache_settings(cfg, read_meta(features), user_keys(path, overrides), features)
    return cfg, notes + taken
