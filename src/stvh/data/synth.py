"""Synthetic volleyball-like dataset: the embedded default dataset of the project.

It is a benchmark of both retrieval focuses of M-STVH:

* *visual focus* — every match has its own court (colour, texture, lines,
  stands) and two jersey colours; clips of one match share them;
* *activity focus* — 8 group activities (``l_``/``r_`` x pass, set, spike,
  winpoint) played by choreographies over T frames. All four activities of a
  side start from the same frame-0 scene, so they differ only by motion; the
  activity is drawn independently of the match.

The output is written in the Volleyball layout read by
:func:`stvh.data.volleyball.read_volleyball`::

    OUT/videos/<match>/annotations.txt       <key>.jpg <activity> (x y w h action)*
    OUT/videos/<match>/<key>/<frame>.jpg     T frames, frame = key + offset
    OUT/tracking/<match>/<key>/<key>.txt     pid x1 y1 x2 y2 frame lost grouping generated action
    OUT/splits.json                          {"train": [...], "test": [...]}
    OUT/dataset.json                         generator, seed, params, image size, window, styles

Everything is a pure function of ``(seed, params)``: one numpy Generator per
clip is seeded from ``(seed, match, clip index)``, so resuming never changes a
byte. Clips are written atomically (frames into a temporary folder renamed
into place) and a rerun skips finished clips. numpy + Pillow only (no torch).
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import asdict, dataclass
from itertools import combinations
from pathlib import Path

import numpy as np

from .atomic import write_text_atomic
from .labels import VOLLEYBALL_ACTIONS, VOLLEYBALL_ACTIVITIES

__all__ = [
    "GENERATOR", "VERSION", "SynthConfig", "MatchStyle", "Scene", "generate", "match_style",
    "initial_layout", "match_activities", "match_test_mask", "simulate_clip", "scene_boxes",
    "annotated_boxes", "render_clip", "court_canvas", "camera_map", "match_distinctness",
    "nearest_centroid_accuracy",
]

GENERATOR = "stvh.data.synth"
VERSION = 2  # 2: per-match light, camera, shorts, stands tiers, attack lines; 16 jersey colours
JPEG_QUALITY = 90
FIRST_KEY, KEY_STEP = 1000, 100  # clip i of a match has key frame FIRST_KEY + KEY_STEP * i
MAX_FRAMES = KEY_STEP  # windows of consecutive clips never share a frame number

# Salts keep the random streams of different purposes independent.
_SALT_CLIP, _SALT_MATCH, _SALT_PAIRS, _SALT_ACTIVITY, _SALT_SPLIT = 11, 23, 37, 41, 53

_ACTION = {name: i for i, name in enumerate(VOLLEYBALL_ACTIONS)}

# Distinct jersey colours; a match wears one unordered pair (120 pairs), so
# every colour is shared by several matches but the pair identifies a match.
JERSEY_PALETTE = np.array([
    (200, 30, 40), (30, 70, 200), (235, 210, 40), (30, 150, 60), (235, 235, 235),
    (35, 35, 40), (240, 130, 30), (120, 50, 160), (40, 190, 210), (230, 110, 170),
    (120, 20, 40), (20, 30, 100), (150, 220, 60), (0, 120, 120), (150, 110, 70), (140, 140, 145),
], np.int64)
_PAIRS = tuple(combinations(range(len(JERSEY_PALETTE)), 2))
# Shorts: dark, white, black or navy (per team), drawn independently of the jersey.
SHORTS_KINDS = ("dark", "white", "black", "navy")
# Court floors: fewer than the matches, so courts are shared too (each drawn +- 25 per channel).
COURT_PALETTE = np.array([
    (200, 140, 80), (60, 110, 170), (70, 140, 90), (180, 80, 60), (140, 140, 150), (210, 190, 140),
    (170, 110, 60), (40, 80, 130), (110, 160, 190), (120, 60, 90), (90, 90, 95), (225, 160, 110),
], np.int64)
TEXTURES = ("boards", "planks", "diagonal", "blotches", "checker")
LINE_PALETTE = ((240, 240, 240), (245, 220, 60), (235, 120, 40), (60, 150, 230))
SKIN_PALETTE = np.array([(240, 200, 170), (220, 170, 130), (180, 120, 80), (120, 80, 50)], np.float64)

# Scene geometry, as fractions of (H, W).
_FLOOR_Y = (0.50, 0.94)    # feet stay in this band of rows
_STANDS_Y = 0.30           # rows above are the stands
_NET_Y = (0.12, 0.62)      # vertical extent of the net at x = W / 2
_BODY_H = 0.17             # body height (feet to head top) at depth scale 1, fraction of H
_BODY_ASPECT = 0.36        # body width / body height
_ARM = 0.30                # raised arms extend the box by this fraction of the body height


# ----------------------------------------------------------------------------- config

@dataclass(frozen=True)
class SynthConfig:
    """All knobs of the generator (see :func:`generate`)."""

    matches: int = 6
    clips_per_match: int = 60
    frames: int = 10
    size: tuple[int, int] = (180, 320)
    players_per_side: int = 6
    jitter: float = 1.0
    pan: float = 4.0
    occlusion: float = 0.05
    missing: float = 0.05
    label_noise: float = 0.0
    seed: int = 0
    test_fraction: float = 0.3

    def validate(self) -> None:
        """Raise ``ValueError`` with a clear message for any bad knob."""
        def integer(name, lo, hi=None):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise ValueError(f"{name} must be an integer, got {v!r}")
            if v < lo or (hi is not None and v > hi):
                raise ValueError(f"{name} must be in [{lo}, {hi if hi is not None else 'inf'}], got {v}")

        integer("matches", 1)
        integer("clips_per_match", 2)  # every match needs a train and a test clip
        integer("frames", 2, MAX_FRAMES)
        integer("players_per_side", 1, 8)
        integer("seed", 0)
        if len(self.size) != 2 or any(isinstance(v, bool) or not isinstance(v, (int, np.integer))
                                      for v in self.size):
            raise ValueError(f"size must be (height, width) integers, got {self.size!r}")
        if min(self.size) < 64 or max(self.size) > 4096:
            raise ValueError(f"size must be at least 64x64 and at most 4096x4096, got "
                             f"{self.size[0]}x{self.size[1]}")
        for name in ("jitter", "pan"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        if self.pan > min(self.size) / 8:
            raise ValueError(f"pan must be at most min(size)/8 = {min(self.size) / 8:g} pixels, got {self.pan}")
        for name in ("occlusion", "missing", "label_noise"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} is a probability and must be in [0, 1], got {v!r}")
        if not isinstance(self.test_fraction, (int, float)) or not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {self.test_fraction!r}")

    def params(self) -> dict:
        """JSON-ready knobs (without the seed) recorded in ``dataset.json``."""
        d = asdict(self)
        d.pop("seed")
        d["size"] = [int(v) for v in self.size]
        for k in ("jitter", "pan", "occlusion", "missing", "label_noise", "test_fraction"):
            d[k] = float(d[k])
        for k in ("matches", "clips_per_match", "frames", "players_per_side"):
            d[k] = int(d[k])
        return d

    @property
    def offsets(self) -> np.ndarray:
        """Window offsets around the key frame, ``(T,)``: -5..+4 for T = 10."""
        return np.arange(-(self.frames // 2), self.frames - self.frames // 2)

    @property
    def key_index(self) -> int:
        return self.frames // 2

    @property
    def n_persons(self) -> int:
        return 2 * self.players_per_side


# ----------------------------------------------------------------------------- match styles

@dataclass(frozen=True)
class MatchStyle:
    """Visual identity of a match: what visual-focus retrieval must recognise.

    ``light`` is a per-channel gain (brightness x colour temperature) on the
    whole image; ``camera`` is ``(zoom, dx, dy)``: the image is the scene
    scaled by ``zoom`` about (W/2, 0.72 H), then moved by ``dx`` W, ``dy`` H.
    """

    court: tuple[int, int, int]
    texture: str
    period: int
    contrast: float
    lines: tuple[int, int, int]
    stands: tuple[int, int, int]
    jerseys: tuple[tuple[int, int, int], tuple[int, int, int]]
    texture_seed: int
    shorts: tuple[tuple[int, int, int], tuple[int, int, int]] | None = None  # None: darker jersey
    attack_lines: bool = False
    stand_tiers: int = 0       # horizontal tiers of the stands (0: speckle only)
    speckle: float = 30.0      # crowd speckle amplitude of the stands
    light: tuple[float, float, float] = (1.0, 1.0, 1.0)
    camera: tuple[float, float, float] = (1.0, 0.0, 0.0)

    def to_json(self) -> dict:
        return {"court": list(self.court), "jerseys": [list(j) for j in self.jerseys],
                "shorts": [list(j) for j in self.shorts] if self.shorts else None,
                "texture": self.texture, "period": self.period, "contrast": round(self.contrast, 3),
                "lines": list(self.lines), "attack_lines": self.attack_lines, "stands": list(self.stands),
                "stand_tiers": self.stand_tiers, "speckle": round(self.speckle, 1),
                "light": [round(v, 3) for v in self.light], "camera": [round(v, 3) for v in self.camera]}


def _shorts_colour(kind: str, jersey) -> tuple[int, int, int]:
    if kind == "dark":
        return tuple(int(v) for v in np.clip(np.asarray(jersey) * 0.45 + 15, 0, 255))
    return {"white": (235, 235, 235), "black": (30, 30, 35), "navy": (30, 40, 90)}[kind]


def match_style(seed: int, match: int) -> MatchStyle:
    """The style of ``match``, a pure function of ``(seed, match)``.

    Jersey pairs are drawn without replacement over blocks of 120 matches, so
    up to 120 matches never share both colours. Court colour, texture, lines,
    stands, shorts, light and camera are drawn independently per match.
    """
    block, pos = divmod(match, len(_PAIRS))
    a, b = _PAIRS[np.random.default_rng([seed, block, _SALT_PAIRS]).permutation(len(_PAIRS))[pos]]
    rng = np.random.default_rng([seed, match, _SALT_MATCH])
    if rng.random() < 0.5:
        a, b = b, a
    jerseys = tuple(tuple(int(v) for v in np.clip(JERSEY_PALETTE[i] + rng.integers(-10, 11, 3), 0, 255))
                    for i in (a, b))
    court = np.clip(COURT_PALETTE[rng.integers(len(COURT_PALETTE))] + rng.integers(-25, 26, 3), 0, 255)
    lines = LINE_PALETTE[int(rng.integers(len(LINE_PALETTE)))]
    texture, period = TEXTURES[int(rng.integers(len(TEXTURES)))], int(rng.integers(4, 13))
    contrast, stands = float(rng.uniform(6, 22)), tuple(int(v) for v in rng.integers(20, 140, 3))
    texture_seed = int(rng.integers(2**31))
    shorts = tuple(_shorts_colour(SHORTS_KINDS[int(rng.integers(len(SHORTS_KINDS)))], j) for j in jerseys)
    attack_lines, tiers, speckle = bool(rng.random() < 0.5), int(rng.integers(0, 6)), float(rng.uniform(10, 40))
    bright, warm = rng.uniform(0.85, 1.12), rng.uniform(-1, 1)   # brightness, colour temperature
    light = (bright * (1 + 0.08 * warm), bright, bright * (1 - 0.08 * warm))
    camera = (float(rng.uniform(0.85, 1.0)), float(rng.uniform(-0.02, 0.02)), float(rng.uniform(-0.03, 0.03)))
    return MatchStyle(court=tuple(int(v) for v in court), texture=texture, period=period, contrast=contrast,
                      lines=lines, stands=stands, jerseys=jerseys, texture_seed=texture_seed, shorts=shorts,
                      attack_lines=attack_lines, stand_tiers=tiers, speckle=speckle,
                      light=tuple(float(v) for v in light), camera=camera)


_CAM_CY = 0.72  # the camera zooms about (W/2, 0.72 H), the middle of the floor


def camera_map(camera: tuple[float, float, float], size: tuple[int, int]):
    """``(fx, fy, zoom)``: scene pixel -> image pixel maps of ``camera`` (before the pan)."""
    H, W = size
    z, dx, dy = camera
    return (lambda x: W / 2 + (x - W / 2) * z + dx * W), (lambda y: _CAM_CY * H + (y - _CAM_CY * H) * z + dy * H), z


def court_canvas(style: MatchStyle, size: tuple[int, int], margin: int) -> np.ndarray:
    """Static background of a match, ``(H + 2m, W + 2m, 3)`` float32 (the margin absorbs camera pan)."""
    H, W = size
    Hc, Wc = H + 2 * margin, W + 2 * margin
    rng = np.random.default_rng(style.texture_seed)
    yy, xx = np.mgrid[0:Hc, 0:Wc].astype(np.float32)
    p = float(style.period)
    if style.texture == "boards":      # horizontal boards, each a little brighter or darker
        tex = rng.uniform(-1, 1, Hc // style.period + 2)[(yy // p).astype(int)]
    elif style.texture == "planks":    # vertical planks
        tex = rng.uniform(-1, 1, Wc // style.period + 2)[(xx // p).astype(int)]
    elif style.texture == "diagonal":
        tex = np.sin(2 * np.pi * (xx + yy) / (2 * p))
    elif style.texture == "checker":
        tex = np.where(((yy // p) + (xx // p)) % 2 == 0, 1.0, -1.0)
    else:                              # blotches: coarse noise upsampled
        coarse = rng.uniform(-1, 1, (Hc // style.period + 2, Wc // style.period + 2))
        tex = coarse[(yy // p).astype(int), (xx // p).astype(int)]
    canvas = np.asarray(style.court, np.float32) + style.contrast * tex[..., None].astype(np.float32)
    fx, fy, z = camera_map(style.camera, size)
    X = lambda v: margin + int(round(fx(v * W)))   # noqa: E731  scene fraction of W -> canvas column
    Y = lambda v: margin + int(round(fy(v * H)))   # noqa: E731  scene fraction of H -> canvas row
    # stands: a darker band with a crowd-like speckle, in tiers for some matches
    ys = max(1, Y(_STANDS_Y))
    stands = np.asarray(style.stands, np.float32) + rng.uniform(-style.speckle, style.speckle,
                                                                (ys, Wc, 1)).astype(np.float32)
    if style.stand_tiers:
        tier = (np.arange(ys) * style.stand_tiers // ys) % 2
        stands += np.where(tier == 1, 25.0, -10.0).astype(np.float32)[:, None, None]
    canvas[:ys] = stands
    # court lines: side lines, end lines, the centre line under the net and (some matches) attack lines
    lc = np.asarray(style.lines, np.float32)
    t = max(1, int(round(z * H / 90)))
    y_far, y_near = Y(0.47), Y(0.97)
    x_end0, x_end1, x_mid = X(0.03), X(0.97), X(0.5)
    canvas[y_far:y_far + t, x_end0:x_end1] = lc
    canvas[y_near:y_near + t, x_end0:x_end1] = lc
    canvas[y_far:y_near + t, x_end0:x_end0 + t] = lc
    canvas[y_far:y_near + t, x_end1 - t:x_end1] = lc
    canvas[y_far:y_near + t, x_mid - t // 2:x_mid - t // 2 + t] = lc
    if style.attack_lines:
        for xa in (X(0.5 - 0.47 / 3), X(0.5 + 0.47 / 3)):
            canvas[y_far:y_near + t, xa - t // 2:xa - t // 2 + t] = lc
    # net: a meshed vertical band with a white top tape and a dark post
    n0, n1 = Y(_NET_Y[0]), Y(_NET_Y[1])
    nw = max(2, int(round(z * W / 120)))
    mesh = np.where((np.arange(n0, n1) % 3 == 0)[:, None, None], 30.0, 200.0).astype(np.float32)
    canvas[n0:n1, x_mid - nw // 2:x_mid - nw // 2 + nw] = mesh
    canvas[n0:n0 + t + 1, x_mid - 2 * nw:x_mid + 2 * nw] = 245.0
    canvas[n0:y_near, x_mid + nw:x_mid + nw + t] = 50.0
    return np.clip(canvas, 0, 255)


# ----------------------------------------------------------------------------- per-match draws

def match_activities(seed: int, match: int, clips_per_match: int) -> np.ndarray:
    """True activity id of every clip of a match, ``(C,)``: balanced, shuffled, match-independent."""
    rng = np.random.default_rng([seed, match, _SALT_ACTIVITY])
    # the remainder of clips_per_match / 8 goes to activities drawn at random per match
    return rng.permutation(np.resize(rng.permutation(len(VOLLEYBALL_ACTIVITIES)), clips_per_match))


def match_test_mask(seed: int, match: int, activities: np.ndarray, test_fraction: float) -> np.ndarray:
    """``(C,)`` bool, True for test clips: stratified by activity, >= 1 clip in each split."""
    rng = np.random.default_rng([seed, match, _SALT_SPLIT])
    C = len(activities)
    order = np.lexsort((rng.random(C), activities))  # grouped by activity, random within
    phase = rng.random()
    k = np.arange(C)
    picked = np.floor((k + 1) * test_fraction + phase) > np.floor(k * test_fraction + phase)
    test = np.zeros(C, bool)
    test[order[picked]] = True
    if not test.any():
        test[order[rng.integers(C)]] = True
    if test.all():
        test[order[rng.integers(C)]] = False
    return test


# ----------------------------------------------------------------------------- choreography

@dataclass
class Scene:
    """One simulated clip: everything needed to render and annotate it, no randomness left.

    Persons are in canonical order: the left-court team ``0..P-1`` (front row
    first), the right-court team ``P..2P-1``. Positions are scene pixels
    before camera pan; ``shift`` is the pan of each frame.
    """

    activity: int            # true activity id
    label: int               # written activity id (differs under label noise)
    key: int                 # index of the key player (digger, setter, hitter, first celebrant)
    team: np.ndarray         # (n,) jersey index 0/1
    x: np.ndarray            # (T, n) foot x
    y: np.ndarray            # (T, n) foot y (depth)
    z: np.ndarray            # (T, n) lift above the floor (jumps)
    hs: np.ndarray           # (T, n) body height factor (crouch < 1, lying << 1)
    ws: np.ndarray           # (T, n) body width factor
    arm: np.ndarray          # (T, n) raised-arm fraction in [0, 1]
    actions: np.ndarray      # (n,) action ids
    grouping: np.ndarray     # (n,) 1 for persons taking part in the activity
    present: np.ndarray      # (n,) bool, False for a missing person
    occluded: np.ndarray     # (T, n) bool
    occluder: np.ndarray     # (n, 4) occluder rectangle as fractions of the box (fx1, fy1, fx2, fy2)
    occluder_colour: np.ndarray  # (n, 3)
    skin: np.ndarray         # (n, 3)
    ball: np.ndarray         # (T, 2) ball centre, scene pixels
    shift: np.ndarray        # (T, 2) int camera pan (dx, dy)
    gain: float              # global brightness of the clip
    noise: np.ndarray        # (T, n, 4) Gaussian annotation noise, pixels
    order: np.ndarray        # (n_present,) annotation order of the present persons
    camera: tuple[float, float, float] = (1.0, 0.0, 0.0)  # the match's (zoom, dx, dy), see MatchStyle


def _ease(u: np.ndarray, a: float, b: float) -> np.ndarray:
    """Smoothstep from 0 (u <= a) to 1 (u >= b)."""
    v = np.clip((u - a) / max(b - a, 1e-6), 0.0, 1.0)
    return v * v * (3 - 2 * v)


def _bump(u: np.ndarray, a: float, b: float) -> np.ndarray:
    """Half sine on [a, b], 0 elsewhere (a jump profile)."""
    v = np.clip((u - a) / max(b - a, 1e-6), 0.0, 1.0)
    return np.sin(np.pi * v)


def _front_count(players_per_side: int) -> int:
    return (players_per_side + 1) // 2


def _depth_scale(y: np.ndarray, H: int) -> np.ndarray:
    """Perspective: persons nearer the camera (larger y) are larger."""
    return 0.7 + 0.6 * (y / H - 0.5) / 0.45


def initial_layout(side: str, players_per_side: int, size: tuple[int, int],
                   rng: np.random.Generator) -> np.ndarray:
    """Frame-0 foot positions ``(P, 2)`` (x, y) of the team on court half ``side`` ('l' or 'r').

    Front row (``(P + 1) // 2`` players, listed first) near the net, back row
    behind it, evenly spread in depth and zig-zagged so that neighbours in
    depth do not hide each other, with a small random perturbation. It does
    not depend on the activity: every activity starts from it.
    """
    if side not in ("l", "r"):
        raise ValueError(f"side must be 'l' or 'r', got {side!r}")
    H, W = size
    front = _front_count(players_per_side)
    pts = []
    for k, xf in ((front, 0.40), (players_per_side - front, 0.20)):
        pts += [(xf + 0.04 * (-1) ** j, 0.56 + 0.34 * (j + 0.5) / k) for j in range(k)]
    pts = np.asarray(pts, np.float64) + rng.uniform(-1, 1, (players_per_side, 2)) * (0.025, 0.03)
    x = pts[:, 0] * W
    return np.stack([x if side == "l" else W - x, pts[:, 1] * H], axis=1)


def _arc(u: np.ndarray, u0: float, u1: float, p0, p1, lift: float) -> np.ndarray:
    """Ball path from p0 (at u0) to p1 (at u1) with a parabolic rise of ``lift`` pixels, ``(T, 2)``."""
    v = np.clip((u - u0) / max(u1 - u0, 1e-6), 0.0, 1.0)[:, None]
    pos = np.asarray(p0, float) + (np.asarray(p1, float) - np.asarray(p0, float)) * v
    pos[:, 1] -= lift * 4 * v[:, 0] * (1 - v[:, 0])
    return pos


def simulate_clip(activity: int, cfg: SynthConfig, rng: np.random.Generator) -> Scene:
    """Simulate one clip of ``activity`` (an index of ``VOLLEYBALL_ACTIVITIES``).

    The draws that fix frame 0 (team sides, formations, postures, ball start,
    pan, gain, event time) come first and do not depend on the activity, so
    with equal generators the four activities of a side share frame 0 exactly.
    """
    H, W = cfg.size
    T, P = cfg.frames, cfg.players_per_side
    n = 2 * P
    u = np.linspace(0.0, 1.0, T)  # (T,) normalised time
    net = W / 2
    # --- activity-independent draws (frame 0) -----------------------------------
    flip, alt = rng.random(), int(rng.integers(len(VOLLEYBALL_ACTIVITIES)))
    label = alt if flip < cfg.label_noise else int(activity)
    left_team = int(rng.integers(2))
    team = np.r_[np.full(P, left_team), np.full(P, 1 - left_team)]
    start = np.concatenate([initial_layout("l", P, cfg.size, rng), initial_layout("r", P, cfg.size, rng)])
    waiting = rng.random(n) < 0.5                     # base posture: ready (waiting) or upright
    hs0 = np.where(waiting, 0.9, 1.0)
    ws0 = np.where(waiting, 1.1, 1.0)
    skin = SKIN_PALETTE[rng.integers(len(SKIN_PALETTE), size=n)] + rng.uniform(-10, 10, (n, 3))
    name = VOLLEYBALL_ACTIVITIES[activity]
    side, kind = name[0], name[2:]
    d = 1.0 if side == "l" else -1.0                  # direction from the acting side towards the net
    ball0 = (net - d * rng.uniform(0.08, 0.3) * W, rng.uniform(0.06, 0.2) * H)
    ue = float(rng.uniform(0.4, 0.6))                 # time of the key event
    angle, amp = rng.uniform(0, 2 * np.pi), rng.uniform(0, cfg.pan)
    shift = np.rint(amp * (u - 0.5)[:, None] * (np.cos(angle), np.sin(angle))).astype(np.int64)  # (T, 2)
    gain = float(rng.uniform(0.9, 1.1))

    x = np.repeat(start[None, :, 0], T, 0)            # (T, n)
    y = np.repeat(start[None, :, 1], T, 0)            # (T, n)
    z = np.zeros((T, n))
    hs = np.repeat(hs0[None], T, 0)
    ws = np.repeat(ws0[None], T, 0)
    arm = np.zeros((T, n))
    actions = np.where(waiting, _ACTION["waiting"], _ACTION["standing"])
    grouping = np.zeros(n, np.int64)
    base_h = _BODY_H * H * _depth_scale(start[:, 1], H)  # (n,) body height at frame 0

    acting = np.arange(P) if side == "l" else np.arange(P, n)
    other = np.arange(P, n) if side == "l" else np.arange(P)
    fc = _front_count(P)
    a_front, a_back = acting[:fc], acting[fc:]
    o_front = other[:fc]

    def role(i, action):
        actions[i] = _ACTION[action]
        grouping[i] = 1

    def move_to(i, tx, ty, a, b):
        e = _ease(u, a, b)
        x[:, i] += (tx - x[0, i]) * e
        y[:, i] += (ty - y[0, i]) * e

    def top(i, t_u):
        """Scene point just above the raised hands of person i at time t_u."""
        xi, yi = np.interp(t_u, u, x[:, i]), np.interp(t_u, u, y[:, i])
        h = _BODY_H * H * _depth_scale(yi, H) * np.interp(t_u, u, hs[:, i])
        return xi, yi - np.interp(t_u, u, z[:, i]) - h * (1 + _ARM)

    # --- choreographies -------------------------------------------------------
    if kind == "pass":      # a back-row player runs to the ball and digs it up towards the net
        key = int(rng.choice(a_back if len(a_back) else acting))
        role(key, "digging")
        move_to(key, x[0, key] + rng.choice([-1, 1]) * rng.uniform(0.02, 0.06) * W,
                y[0, key] + rng.uniform(-0.06, 0.06) * H, 0.0, ue)
        c = _ease(u, ue - 0.25, ue)
        hs[:, key] *= 1 - 0.3 * c
        ws[:, key] *= 1 + 0.4 * c
        xk, yk = np.interp(ue, u, x[:, key]), np.interp(ue, u, y[:, key])
        contact = (xk, yk - 0.5 * base_h[key])
        end = (net - d * rng.uniform(0.05, 0.12) * W, rng.uniform(0.05, 0.15) * H)
        ball = np.where((u <= ue)[:, None], _arc(u, 0, ue, ball0, contact, 0.05 * H),
                        _arc(u, ue, 1, contact, end, 0.3 * H))
    elif kind == "set":     # a front player at the net sets the ball, a hitter backs off for the run-up
        key = int(rng.choice(a_front))
        role(key, "setting")
        move_to(key, net - d * rng.uniform(0.03, 0.05) * W, y[0, key], 0.0, ue - 0.1)
        arm[:, key] = _ease(u, ue - 0.3, ue - 0.05) * (1 - _ease(u, ue + 0.15, ue + 0.35))
        rest = [i for i in acting if i != key]
        hitters = [i for i in rest if i in a_front] or rest
        end_x = net - d * 0.2 * W
        if hitters:
            h = int(rng.choice(hitters))
            role(h, "moving")
            move_to(h, x[0, h] - d * rng.uniform(0.04, 0.07) * W, y[0, h], ue - 0.15, 1.0)
            end_x = x[-1, h]
        contact = top(key, ue)
        end = (end_x, rng.uniform(0.05, 0.12) * H)
        ball = np.where((u <= ue)[:, None], _arc(u, 0, ue, ball0, contact, 0.05 * H),
                        _arc(u, ue, 1, contact, end, 0.15 * H))
    elif kind == "spike":   # a hitter jumps and smashes, the other side's front row jumps to block
        key = int(rng.choice(a_front))
        role(key, "spiking")
        move_to(key, net - d * rng.uniform(0.035, 0.05) * W, y[0, key], 0.0, ue - 0.25)
        jump = _bump(u, ue - 0.3, ue + 0.3)
        z[:, key] = rng.uniform(0.4, 0.5) * base_h[key] * jump
        arm[:, key] = np.clip(2 * jump, 0, 1)
        blockers = o_front[np.argsort(np.abs(y[0, o_front] - y[0, key]), kind="stable")]
        for b in blockers[:int(rng.integers(1, 3))]:
            role(int(b), "blocking")
            move_to(b, net + d * 0.035 * W, y[0, b] + 0.7 * (y[0, key] - y[0, b]), 0.0, ue - 0.2)
            bj = _bump(u, ue - 0.25, ue + 0.3)
            z[:, b] = rng.uniform(0.25, 0.35) * base_h[b] * bj
            arm[:, b] = np.clip(2 * bj, 0, 1)
        contact = top(key, ue)
        floor = (net + d * rng.uniform(0.1, 0.35) * W, rng.uniform(0.6, 0.9) * H)
        ball = np.where((u <= ue)[:, None], _arc(u, 0, ue, ball0, contact, 0.05 * H),
                        _arc(u, ue, min(1.0, ue + rng.uniform(0.2, 0.35)), contact, floor, 0.0))
    else:                   # winpoint: the scoring team gathers and celebrates, an opponent falls
        centre = (net - d * rng.uniform(0.18, 0.28) * W, rng.uniform(0.62, 0.82) * H)
        phi = rng.uniform(0, 2 * np.pi)
        stay = int(rng.choice(acting)) if P >= 3 and rng.random() < 0.25 else -1
        movers = [int(i) for i in acting if i != stay]
        jumpers = set(rng.choice(movers, size=min(len(movers), int(rng.integers(0, 3))), replace=False).tolist())
        for j, i in enumerate(movers):
            a = rng.uniform(0, 0.15)
            b = float(np.clip(ue + rng.uniform(0.05, 0.25), a + 0.25, 1.0))
            th = phi + 2 * np.pi * j / len(movers)
            move_to(i, centre[0] + 0.05 * W * np.cos(th), centre[1] + 0.07 * H * np.sin(th), a, b)
            if i in jumpers:
                role(i, "jumping")
                z[:, i] = 0.18 * base_h[i] * np.abs(np.sin(3 * np.pi * (u - a))) * _ease(u, a, a + 0.1)
                arm[:, i] = _ease(u, a, b)
            else:
                role(i, "moving")
        key = movers[0]
        faller = int(rng.choice(other))
        actions[faller] = _ACTION["falling"]
        f = _ease(u, ue - 0.25, ue + 0.05)
        hs[:, faller] *= 1 - 0.62 * f
        ws[:, faller] *= 1 + 1.5 * f
        floor = (net + d * rng.uniform(0.1, 0.35) * W, rng.uniform(0.6, 0.9) * H)
        t_land = ue * rng.uniform(0.5, 0.9)
        ball = np.where((u <= t_land)[:, None], _arc(u, 0, t_land, ball0, floor, 0.05 * H),
                        _arc(u, t_land, 1, floor, (floor[0] + d * 0.03 * W, floor[1]), 0.0))

    # --- distractors: 0-2 bystanders shuffle around (label 'moving') -------------
    free = [i for i in range(n) if not grouping[i] and actions[i] != _ACTION["falling"]]
    k = min(len(free), int(rng.choice(3, p=(0.3, 0.4, 0.3))))
    for i in rng.choice(free, size=k, replace=False) if k else []:
        th, dist = rng.uniform(0, 2 * np.pi), rng.uniform(0.025, 0.05) * W
        a = rng.uniform(0, 0.4)
        e = _ease(u, a, a + rng.uniform(0.3, 0.6))
        x[:, i] += dist * np.cos(th) * e
        y[:, i] += 0.6 * dist * np.sin(th) * e
        actions[i] = _ACTION["moving"]

    # keep every team on its half and every person well inside the frame
    margin = 0.05 * W + cfg.pan
    x[:, :P] = np.clip(x[:, :P], margin, net - 0.015 * W)
    x[:, P:] = np.clip(x[:, P:], net + 0.015 * W, W - margin)
    y[:] = np.clip(y, _FLOOR_Y[0] * H, _FLOOR_Y[1] * H)

    # --- nuisances: missing persons, occluders, annotation noise, person order ---
    involved = grouping.astype(bool) | (actions == _ACTION["falling"])
    involved[key] = True
    present = ~((rng.random(n) < cfg.missing) & ~involved)   # players of the activity are never missing
    occ_person = rng.random(n) < cfg.occlusion
    occluded = np.zeros((T, n), bool)
    occluder = np.zeros((n, 4))
    for i in np.flatnonzero(occ_person):
        length = int(rng.integers(max(1, T // 4), max(1, T // 2) + 1))
        t0 = int(rng.integers(0, T - length + 1))
        occluded[t0:t0 + length, i] = True
        part = rng.uniform(0.35, 0.65)
        occluder[i] = ((0, 1 - part, 1, 1), (0, 0, part, 1), (1 - part, 0, 1, 1))[int(rng.integers(3))]
    occluder_colour = rng.uniform(60, 200, (n, 1)) + rng.uniform(-15, 15, (n, 3))
    noise = rng.normal(0.0, 1.0, (T, n, 4)) * cfg.jitter
    order = rng.permutation(np.flatnonzero(present))
    return Scene(activity=int(activity), label=label, key=int(key), team=team, x=x, y=y, z=z, hs=hs, ws=ws,
                 arm=arm, actions=actions.astype(np.int64), grouping=grouping, present=present,
                 occluded=occluded & present[None], occluder=occluder, occluder_colour=occluder_colour,
                 skin=skin, ball=ball, shift=shift, gain=gain, noise=noise, order=order)


# ----------------------------------------------------------------------------- geometry, render

def _parts(scene: Scene, size: tuple[int, int]) -> dict[str, np.ndarray]:
    """Integer rasterisation of every person, ``(T, n)`` arrays in image pixels (ends exclusive)."""
    H, W = size
    fx, fy, zoom = camera_map(scene.camera, size)
    cx = fx(scene.x) + scene.shift[:, :1]
    fy_ = fy(scene.y) + scene.shift[:, 1:]
    s = _depth_scale(scene.y, H) * zoom
    h = _BODY_H * H * s * scene.hs
    w = _BODY_H * _BODY_ASPECT * H * s * scene.ws
    x1 = np.rint(cx - w / 2).astype(np.int64)
    x2 = np.maximum(x1 + 2, np.rint(cx + w / 2).astype(np.int64))
    yb = np.rint(fy_ - zoom * scene.z).astype(np.int64)  # feet (exclusive bottom)
    bh = np.maximum(4, np.rint(h).astype(np.int64))
    yt = yb - bh                                         # head top
    hh = np.maximum(1, np.rint(0.22 * bh).astype(np.int64))
    y_torso = yt + hh
    y_shorts = y_torso + np.maximum(1, np.rint(0.38 * bh).astype(np.int64))
    y_legs = np.minimum(yb - 1, y_shorts + np.maximum(1, np.rint(0.14 * bh).astype(np.int64)))
    y_top = yt - np.rint(_ARM * bh * scene.arm).astype(np.int64)  # raised arms
    return dict(x1=x1, x2=x2, yb=yb, yt=yt, y_torso=y_torso, y_shorts=y_shorts, y_legs=y_legs, y_top=y_top)


def scene_boxes(scene: Scene, size: tuple[int, int]) -> np.ndarray:
    """Tight boxes of the rendered persons, ``(T, n, 4)`` int x1, y1, x2, y2 clipped to the image."""
    p = _parts(scene, size)
    H, W = size
    box = np.stack([p["x1"], p["y_top"], p["x2"], p["yb"]], axis=-1)
    return _clip_boxes(box, H, W)


def _clip_boxes(box: np.ndarray, H: int, W: int) -> np.ndarray:
    """Clip ``(..., 4)`` int boxes to the image, keeping at least one pixel of width and height."""
    box = box.copy()
    box[..., 0] = np.clip(box[..., 0], 0, W - 1)
    box[..., 1] = np.clip(box[..., 1], 0, H - 1)
    box[..., 2] = np.clip(np.maximum(box[..., 2], box[..., 0] + 1), 1, W)
    box[..., 3] = np.clip(np.maximum(box[..., 3], box[..., 1] + 1), 1, H)
    return box


def annotated_boxes(scene: Scene, size: tuple[int, int]) -> np.ndarray:
    """Boxes written to the files: tight boxes + Gaussian jitter, rounded and clipped, ``(T, n, 4)`` int."""
    H, W = size
    noisy = np.rint(scene_boxes(scene, size) + scene.noise).astype(np.int64)
    return _clip_boxes(noisy, H, W)


def _fill(img: np.ndarray, y0, y1, x0, x1, colour) -> None:
    """Fill ``img[y0:y1, x0:x1]`` (clipped to the image) with ``colour``."""
    H, W = img.shape[:2]
    y0, y1, x0, x1 = max(int(y0), 0), min(int(y1), H), max(int(x0), 0), min(int(x1), W)
    if y1 > y0 and x1 > x0:
        img[y0:y1, x0:x1] = colour


def render_clip(scene: Scene, style: MatchStyle, size: tuple[int, int],
                canvas: np.ndarray | None = None) -> np.ndarray:
    """Render the clip, ``(T, H, W, 3)`` uint8. ``canvas`` = :func:`court_canvas` (built when omitted).

    Painter's order (far persons first), then occluders, then the ball. Each
    person is a head, a jersey-coloured torso (the team colour, whatever the
    role), shorts, legs and, when raised, two arms; its tight box is exactly
    :func:`scene_boxes`.
    """
    H, W = size
    T, n = scene.x.shape
    if canvas is None:
        canvas = court_canvas(style, size, _margin(float(np.abs(scene.shift).max()) * 2))
    m = (canvas.shape[0] - H) // 2
    g = scene.gain * np.asarray(style.light, np.float32)                                # (3,) light of the clip
    bg = np.clip(canvas * g, 0, 255).astype(np.uint8)
    jersey = np.clip(np.asarray(style.jerseys, float) * g, 0, 255).astype(np.uint8)     # (2, 3)
    shorts_rgb = (np.asarray(style.shorts, float) if style.shorts is not None
                  else np.asarray(style.jerseys, float) * 0.45 + 15)
    shorts = np.clip(shorts_rgb * g, 0, 255).astype(np.uint8)
    skin = np.clip(scene.skin * g, 0, 255).astype(np.uint8)                              # (n, 3)
    occ = np.clip(scene.occluder_colour * g, 0, 255).astype(np.uint8)
    ball_c = np.clip(np.array([250, 245, 205]) * g, 0, 255).astype(np.uint8)
    fx, fy, zoom = camera_map(scene.camera, size)
    r = max(2, int(round(0.011 * W * zoom)))
    ys, xs = np.mgrid[-r:r + 1, -r:r + 1]
    disc = xs * xs + ys * ys <= r * r
    p = {k: v.tolist() for k, v in _parts(scene, size).items()}  # python ints: fast scalar access
    team = scene.team.tolist()
    shift = scene.shift.tolist()
    ball = np.rint(np.stack([fx(scene.ball[:, 0]), fy(scene.ball[:, 1])], axis=1)).astype(np.int64).tolist()
    depth_order = np.argsort(scene.y, axis=1, kind="stable").tolist()                   # (T, n) far to near
    present = scene.present.tolist()
    occluder = scene.occluder.tolist()
    out = np.empty((T, H, W, 3), np.uint8)
    for t in range(T):
        dx, dy = shift[t]
        img = out[t]
        img[:] = bg[m - dy:m - dy + H, m - dx:m - dx + W]
        x1s, x2s, yts, ytors, yshs, yls, ybs, ytops = (p[k][t] for k in (
            "x1", "x2", "yt", "y_torso", "y_shorts", "y_legs", "yb", "y_top"))
        for i in depth_order[t]:
            if not present[i]:
                continue
            x1, x2, yt, ytor, ysh, yl, yb = x1s[i], x2s[i], yts[i], ytors[i], yshs[i], yls[i], ybs[i]
            bw = x2 - x1
            hw = max(1, min(bw, int(round(0.8 * (ytor - yt)))))
            hx = x1 + (bw - hw) // 2
            _fill(img, yt, ytor, hx, hx + hw, skin[i])                              # head
            _fill(img, ytor, ysh, x1, x2, jersey[team[i]])                          # jersey
            _fill(img, ysh, yl, x1, x2, shorts[team[i]])                            # shorts
            lw = max(1, int(round(0.4 * bw)))
            _fill(img, yl, yb, x1, x1 + lw, skin[i])                                # legs
            _fill(img, yl, yb, x2 - lw, x2, skin[i])
            if ytops[i] < yt:                                                       # raised arms
                aw = max(1, int(round(0.2 * bw)))
                _fill(img, ytops[i], ytor + 1, x1, x1 + aw, skin[i])
                _fill(img, ytops[i], ytor + 1, x2 - aw, x2, skin[i])
        for i in np.flatnonzero(scene.occluded[t]).tolist():
            bx1, by1, bx2, by2 = x1s[i], ytops[i], x2s[i], ybs[i]
            fx1, fy1, fx2, fy2 = occluder[i]
            _fill(img, by1 + fy1 * (by2 - by1), by1 + fy2 * (by2 - by1) + 1,
                  bx1 + fx1 * (bx2 - bx1), bx1 + fx2 * (bx2 - bx1) + 1, occ[i])
        y0, x0 = ball[t][1] + dy - r, ball[t][0] + dx - r
        sy0, sx0 = max(0, -y0), max(0, -x0)
        sy1, sx1 = min(2 * r + 1, H - y0), min(2 * r + 1, W - x0)
        if sy1 > sy0 and sx1 > sx0:
            region = img[y0 + sy0:y0 + sy1, x0 + sx0:x0 + sx1]
            region[disc[sy0:sy1, sx0:sx1]] = ball_c
    return out


def _margin(pan: float) -> int:
    return int(math.ceil(pan / 2)) + 2


# ----------------------------------------------------------------------------- distinctness of matches

def nearest_centroid_accuracy(x: np.ndarray, groups: np.ndarray, train: np.ndarray) -> float:
    """Share of the ``~train`` rows of ``x`` ``(N, F)`` whose nearest group centroid (Euclidean, centroids of
    the ``train`` rows) is their own group: how well a look-up of the match from ``x`` works."""
    x, groups, train = np.asarray(x, np.float64), np.asarray(groups), np.asarray(train, bool)
    names = np.unique(groups[train])
    cent = np.stack([x[train & (groups == g)].mean(0) for g in names])                  # (G, F)
    d = ((x[~train][:, None, :] - cent[None]) ** 2).sum(-1)                               # (Q, G)
    return float((names[d.argmin(1)] == groups[~train]).mean())


def _grid_colour(frame: np.ndarray, g: int) -> np.ndarray:
    """Mean colour of each cell of a g x g grid over ``frame`` (H, W, 3): ``(3 g^2,)``."""
    H, W, _ = frame.shape
    f = frame.astype(np.float64)
    return np.concatenate([f[i * H // g:(i + 1) * H // g, j * W // g:(j + 1) * W // g].reshape(-1, 3).mean(0)
                           for i in range(g) for j in range(g)])


def match_distinctness(seed: int, matches: int, clips_per_match: int = 16,
                       size: tuple[int, int] = (180, 320)) -> dict[str, float]:
    """How distinct ``matches`` matches look: nearest-centroid accuracy of the match from the first frame.

    Half the clips of each match give its centroid, the other half are looked up. Two descriptors:
    ``mean_colour`` (the frame's mean RGB: light and overall colour only) and ``grid4`` (mean RGB of a
    4 x 4 grid: where the stands, court, lines and jerseys are). Renders 2 frames a clip, writes nothing.
    """
    cfg = SynthConfig(matches=matches, clips_per_match=clips_per_match, frames=2, size=tuple(size))
    cfg.validate()
    feats: dict[str, list] = {"mean_colour": [], "grid4": []}
    for m in range(matches):
        style = match_style(seed, m)
        canvas = court_canvas(style, cfg.size, _margin(cfg.pan))
        activities = match_activities(seed, m, clips_per_match)
        for i in range(clips_per_match):
            scene = simulate_clip(int(activities[i]), cfg, _clip_rng(seed, m, i))
            scene.camera = style.camera
            frame = render_clip(scene, style, cfg.size, canvas)[0]
            feats["mean_colour"].append(_grid_colour(frame, 1))
            feats["grid4"].append(_grid_colour(frame, 4))
    groups = np.repeat(np.arange(matches), clips_per_match)
    train = np.tile(np.arange(clips_per_match) < clips_per_match // 2, matches)
    return {k: nearest_centroid_accuracy(np.stack(v), groups, train) for k, v in feats.items()}


# ----------------------------------------------------------------------------- text formats

def annotation_line(scene: Scene, key: int, boxes: np.ndarray, key_index: int) -> str:
    """``<key>.jpg <activity> (x y w h action)*`` for the present persons, in annotation order."""
    parts = [f"{key}.jpg", VOLLEYBALL_ACTIVITIES[scene.label]]
    kb = boxes[key_index].tolist()
    for i in scene.order.tolist():
        x1, y1, x2, y2 = kb[i]
        parts += [str(x1), str(y1), str(x2 - x1), str(y2 - y1), VOLLEYBALL_ACTIONS[scene.actions[i]]]
    return " ".join(parts) + "\n"


def tracking_text(scene: Scene, key: int, boxes: np.ndarray, offsets: np.ndarray) -> str:
    """``pid x1 y1 x2 y2 frame lost grouping generated action`` per person (pid = annotation rank) and frame."""
    lines = []
    b, lost, offs = boxes.tolist(), scene.occluded.astype(int).tolist(), [int(o) for o in offsets]
    for pid, i in enumerate(scene.order.tolist()):
        action = VOLLEYBALL_ACTIONS[scene.actions[i]]
        grouping = int(scene.grouping[i])
        for t, o in enumerate(offs):
            x1, y1, x2, y2 = b[t][i]
            lines.append(f"{pid} {x1} {y1} {x2} {y2} {key + o} {lost[t][i]} {grouping} 0 {action}\n")
    return "".join(lines)


# ----------------------------------------------------------------------------- generate

def _clip_rng(seed: int, match: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, match, index, _SALT_CLIP])


def _clip_done(clip_dir: Path, track_file: Path, frame_ids) -> bool:
    return track_file.is_file() and clip_dir.is_dir() and all((clip_dir / f"{f}.jpg").is_file()
                                                               for f in frame_ids)


def _remove_stale(folder: Path) -> None:
    """Remove leftovers of an interrupted run: ``.tmp-*`` clip folders and ``.*.tmp`` files."""
    if not folder.is_dir():
        return
    for p in folder.iterdir():
        if p.name.startswith(".tmp-") and p.is_dir():
            shutil.rmtree(p)
        elif p.name.startswith(".") and p.name.endswith(".tmp") and p.is_file():
            p.unlink()


def _metadata(cfg: SynthConfig, complete: bool) -> dict:
    return {
        "format": "volleyball", "generator": GENERATOR, "version": VERSION, "seed": int(cfg.seed),
        "params": cfg.params(), "image_size": [int(v) for v in cfg.size],
        "window": [int(cfg.offsets[0]), int(cfg.offsets[-1])],
        "activities": list(VOLLEYBALL_ACTIVITIES), "actions": list(VOLLEYBALL_ACTIONS),
        "clips": cfg.matches * cfg.clips_per_match,
        "matches": {str(m): match_style(cfg.seed, m).to_json() for m in range(cfg.matches)},
        "complete": complete,
    }


def _prepare_output(out: Path, cfg: SynthConfig, overwrite: bool) -> None:
    """Accept an empty/new folder or a run of the same generator, seed and params; else raise."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a folder; choose another output folder")
    if not out.exists() or not any(out.iterdir()):
        return
    meta_path = out / "dataset.json"
    meta = None
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except ValueError:
            meta = None
    if not isinstance(meta, dict) or meta.get("generator") != GENERATOR:
        raise FileExistsError(f"{out} is not empty and holds no dataset written by {GENERATOR}; "
                              f"choose another (new or empty) folder")
    ours = {"version": VERSION, "seed": int(cfg.seed), "params": cfg.params()}
    theirs = {k: meta.get(k) for k in ours}
    if theirs == ours:
        return
    if not overwrite:
        diff = sorted(k for k in ours["params"] if (theirs.get("params") or {}).get(k) != ours["params"][k])
        diff += [k for k in ("version", "seed") if theirs[k] != ours[k]]
        raise ValueError(f"{out} already holds a synthetic dataset generated with different settings "
                         f"({', '.join(diff)} differ); choose another folder or pass --overwrite "
                         "(overwrite=True in Python)")
    for name in ("videos", "tracking"):
        shutil.rmtree(out / name, ignore_errors=True)
    for name in ("splits.json", "dataset.json"):
        (out / name).unlink(missing_ok=True)


def _progress(total: int, enabled: bool):
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is a dependency of the package; degrade gracefully all the same
        return None
    return tqdm(total=total, disable=not enabled, desc="synth", unit="clip", dynamic_ncols=True)


def _write_clip(videos_m: Path, track_file: Path, key: int, frames: np.ndarray, frame_ids,
                track_text: str) -> None:
    """Frames into ``.tmp-<key>``, tracking file atomically, then rename the frame folder into place."""
    from PIL import Image

    tmp = videos_m / f".tmp-{key}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    for t, f in enumerate(frame_ids):
        try:
            Image.fromarray(frames[t]).save(tmp / f"{f}.jpg", quality=JPEG_QUALITY)
        except OSError as exc:  # e.g. a full disk: name the frame, leave no partial clip folder behind
            shutil.rmtree(tmp, ignore_errors=True)
            if exc.filename is None:
                exc.filename = str(videos_m / str(key) / f"{f}.jpg")
            raise
    write_text_atomic(track_file, track_text)
    final = videos_m / str(key)
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)


def generate(out: str | Path, *, matches: int = 6, clips_per_match: int = 60, frames: int = 10,
             size: tuple[int, int] = (180, 320), players_per_side: int = 6, jitter: float = 1.0,
             pan: float = 4.0, occlusion: float = 0.05, missing: float = 0.05, label_noise: float = 0.0,
             seed: int = 0, test_fraction: float = 0.3, progress: bool = True,
             overwrite: bool = False) -> dict:
    """Generate (or resume) the synthetic dataset in the Volleyball layout under ``out``.

    Knobs: ``matches`` (visual groups), ``clips_per_match``, ``frames`` (T,
    2..100), ``size`` (H, W) >= 64x64, ``players_per_side`` (1..8; N = 2x),
    ``jitter`` (std of Gaussian noise on annotated boxes, px), ``pan`` (camera
    travel over a clip, px), ``occlusion`` / ``missing`` (per-person
    probabilities), ``label_noise`` (probability a clip's activity label is
    replaced at random), ``test_fraction`` (per match, stratified by activity).

    Same ``seed`` and knobs give byte-identical text files (and JPEGs). A
    folder holding a partial run with the same settings is resumed; one with
    other settings raises ``ValueError`` unless ``overwrite`` (which deletes
    the generated files first). Returns ``{"path", "clips", "written",
    "skipped", "seconds", "clips_per_second"}``.
    """
    cfg = SynthConfig(matches=matches, clips_per_match=clips_per_match, frames=frames,
                      size=tuple(size), players_per_side=players_per_side, jitter=jitter, pan=pan,
                      occlusion=occlusion, missing=missing, label_noise=label_noise, seed=seed,
                      test_fraction=test_fraction)
    cfg.validate()
    out = Path(out)
    t_start = time.perf_counter()
    _prepare_output(out, cfg, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "dataset.json", json.dumps(_metadata(cfg, False), indent=2) + "\n")
    _remove_stale(out)

    offsets = cfg.offsets
    total = cfg.matches * cfg.clips_per_match
    bar = _progress(total, progress)
    written = skipped = 0
    splits: dict[str, list[str]] = {"train": [], "test": []}
    margin = _margin(cfg.pan)
    for m in range(cfg.matches):
        style = match_style(cfg.seed, m)
        canvas = None  # built on the first clip that needs rendering
        videos_m = out / "videos" / str(m)
        tracking_m = out / "tracking" / str(m)
        videos_m.mkdir(parents=True, exist_ok=True)
        _remove_stale(videos_m)
        activities = match_activities(cfg.seed, m, cfg.clips_per_match)
        test = match_test_mask(cfg.seed, m, activities, cfg.test_fraction)
        lines = []
        for i in range(cfg.clips_per_match):
            key = FIRST_KEY + KEY_STEP * i
            frame_ids = [key + int(o) for o in offsets]
            scene = simulate_clip(int(activities[i]), cfg, _clip_rng(cfg.seed, m, i))
            scene.camera = style.camera
            boxes = annotated_boxes(scene, cfg.size)               # (T, n, 4)
            lines.append(annotation_line(scene, key, boxes, cfg.key_index))
            splits["test" if test[i] else "train"].append(f"{m}/{key}")
            track_dir = tracking_m / str(key)
            _remove_stale(track_dir)
            track_file = track_dir / f"{key}.txt"
            if _clip_done(videos_m / str(key), track_file, frame_ids):
                skipped += 1
            else:
                if canvas is None:
                    canvas = court_canvas(style, cfg.size, margin)
                frames_arr = render_clip(scene, style, cfg.size, canvas)
                _write_clip(videos_m, track_file, key, frames_arr, frame_ids,
                            tracking_text(scene, key, boxes, offsets))
                written += 1
            if bar is not None:
                bar.update(1)
        write_text_atomic(videos_m / "annotations.txt", "".join(lines))
    if bar is not None:
        bar.close()
    write_text_atomic(out / "splits.json", json.dumps(splits, indent=1) + "\n")
    write_text_atomic(out / "dataset.json", json.dumps(_metadata(cfg, True), indent=2) + "\n")
    seconds = time.perf_counter() - t_start
    return {"path": str(out), "clips": total, "written": written, "skipped": skipped,
            "seconds": round(seconds, 3), "clips_per_second": round(written / seconds, 2) if seconds else None}
