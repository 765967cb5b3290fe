"""The proposal cache: SQLite files (one per shard) in a cache folder.

Each shard file is written by one process with one transaction per image, in WAL mode, so a
kill at any moment loses at most the image in flight and never corrupts what is stored.
Readers open every ``*.sqlite`` file of the folder.

Tables:

* ``meta(key, value)``: ``format_version`` and ``config`` (JSON: engine, checkpoint sha256,
  precision, prompt kinds, digest of the point set, the window rule (:mod:`.windows`); caches of sap ≤ 0.1 name a SAM
  ``model_type`` instead, read as the matching ``sam_*`` engine);
* ``images``: one row per image attempted: status ``done`` or ``failed`` with the reason, its
  content sha256, size, and timings;
* ``points``: the annotated points of done images (annotation id, image id, category, x, y);
* ``proposals``: one row per proposal: annotation id, image id, prompt kind (and its index in
  the configured order), rank (SAM's multimask index), compressed RLE (counts as text), predicted
  IoU, stability score, COCO box XYWH, area;
* ``embeddings`` (with ``--save-embeddings``): per image the engine's tensors in fp16, one blob
  in the engine's layout order (:data:`pseudolabel.core.engines.registry.FAMILIES`), with input
  and original sizes. ``shape`` is a list for a single ``1×256×64×64`` embedding (SAM) and an
  object ``{name: shape}`` for several (SAM 2: plus its two high-resolution maps; HQ-SAM: plus
  its HQ features).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from .bags import Bag
from .errors import InputError
from .points import PointAnn
from .rle import xywh_to_xyxy
from .windows import describe_layout

FORMAT_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS images (
    image_id INTEGER PRIMARY KEY, file_name TEXT NOT NULL, sha256 TEXT, width INTEGER,
    height INTEGER, status TEXT NOT NULL, reason TEXT, n_points INTEGER,
    encoder_s REAL, decoder_s REAL);
CREATE TABLE IF NOT EXISTS points (
    ann_id INTEGER PRIMARY KEY, image_id INTEGER NOT NULL, category_id INTEGER NOT NULL,
    x REAL NOT NULL, y REAL NOT NULL);
CREATE TABLE IF NOT EXISTS proposals (
    ann_id INTEGER NOT NULL, image_id INTEGER NOT NULL, kind_index INTEGER NOT NULL,
    kind TEXT NOT NULL, rank INTEGER NOT NULL, counts TEXT NOT NULL, height INTEGER NOT NULL,
    width INTEGER NOT NULL, iou REAL NOT NULL, stability REAL NOT NULL, bx REAL, by REAL,
    bw REAL, bh REAL, area INTEGER NOT NULL, PRIMARY KEY (ann_id, kind_index, rank));
CREATE INDEX IF NOT EXISTS proposals_image ON proposals (image_id);
CREATE TABLE IF NOT EXISTS embeddings (
    image_id INTEGER PRIMARY KEY, data BLOB NOT NULL, shape TEXT NOT NULL, input_h INTEGER,
    input_w INTEGER, orig_h INTEGER, orig_w INTEGER);
"""


def points_digest(points: Iterable[PointAnn]) -> str:
    """sha256 of a point set (ids, images, categories, coordinates), independent of JSON layout."""
    h = hashlib.sha256()
    for p in sorted(points, key=lambda p: p.ann_id):
        h.update(f"{p.ann_id},{p.image_id},{p.category_id},{p.x!r},{p.y!r};".encode())
    return h.hexdigest()


def shard_filename(index: int, count: int) -> str:
    return f"shard-{index:05d}-of-{count:05d}.sqlite"


def cache_files(cache_dir: str | Path) -> list[Path]:
    """The shard files of a cache folder (sorted)."""
    return sorted(Path(cache_dir).glob("*.sqlite"))


def shard_layouts(cache_dir: str | Path) -> dict[int, list[Path]]:
    """Shard files of a cache folder by the shard count ``n`` in their names (``-of-n``)."""
    out: dict[int, list[Path]] = {}
    for f in cache_files(cache_dir):
        try:
            n = int(f.stem.rsplit("-of-", 1)[1])
        except (IndexError, ValueError):
            n = -1  # not named by shard_filename: a layout of its own
        out.setdefault(n, []).append(f)
    return out


def check_shard_layout(cache_dir: str | Path, count: int, overwrite: bool = False) -> None:
    """One cache folder holds one shard layout: refuse to add ``-of-count`` shards beside others
    (with ``overwrite``: remove the others first).

    Raises:
        InputError: the folder holds shard files of another layout.
    """
    others = {n: fs for n, fs in shard_layouts(cache_dir).items() if n != count}
    if not others:
        return
    if overwrite:
        for fs in others.values():
            for f in fs:
                for suffix in ("", "-wal", "-shm"):
                    Path(str(f) + suffix).unlink(missing_ok=True)
        return
    n, fs = sorted(others.items())[0]
    raise InputError(f"the cache {cache_dir} holds shards of another layout ({fs[0].name}: "
                     f"{'unknown' if n < 0 else n} shards, not {count}); finish it with that --shard "
                     "layout, or use --overwrite or another --out")


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), timeout=60, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


def _read_meta(conn: sqlite3.Connection) -> dict[str, Any]:
    try:
        rows = conn.execute("SELECT key, value FROM meta").fetchall()
    except sqlite3.DatabaseError:
        return {}
    meta = {k: json.loads(v) for k, v in rows}
    if isinstance(meta.get("config"), dict):
        meta["config"] = normalise_config(meta["config"])
    return meta


def normalise_config(config: dict[str, Any]) -> dict[str, Any]:
    """A cache configuration in today's keys: sap ≤ 0.1's ``model_type`` (a SAM type) → ``engine``."""
    if "engine" in config or "model_type" not in config:
        return config
    from .engines.registry import ALIASES

    out = {k: v for k, v in config.items() if k != "model_type"}
    out["engine"] = ALIASES.get(config["model_type"], config["model_type"])
    return out


def config_difference(stored: dict[str, Any], wanted: dict[str, Any]) -> str | None:
    """First differing key of two cache configurations, as ``"key: stored vs wanted"``."""
    for key in sorted(set(stored) | set(wanted)):
        if stored.get(key) != wanted.get(key):
            return f"{key}: {stored.get(key)!r} in the cache vs {wanted.get(key)!r} now"
    return None


class ShardWriter:
    """Writes one shard file; every :meth:`write_image` / :meth:`write_failure` is one commit."""

    def __init__(self, path: Path, config: dict[str, Any], overwrite: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if overwrite:
            for suffix in ("", "-wal", "-shm"):
                Path(str(self.path) + suffix).unlink(missing_ok=True)
        try:
            self.conn = _connect(self.path)
            self.conn.executescript(_SCHEMA)
        except sqlite3.DatabaseError as e:
            raise InputError(f"{self.path} is not a readable proposal cache ({e}); use --overwrite") from None
        meta = _read_meta(self.conn)
        if meta:
            if meta.get("format_version") != FORMAT_VERSION:
                raise InputError(f"{self.path} has cache format {meta.get('format_version')}, this sap "
                                 f"writes {FORMAT_VERSION}; use --overwrite or another --out")
            stored = meta.get("config", {})
            if stored.get("engine") != config.get("engine"):
                raise InputError(f"the cache in {self.path.parent} holds proposals of engine {stored.get('engine')}, "
                                 f"not {config.get('engine')}; use --overwrite to replace it or choose another --out")
            if describe_layout(stored) != describe_layout(config):
                raise InputError(f"the cache in {self.path.parent} holds proposals made with windows "
                                 f"{describe_layout(stored)}, not {describe_layout(config)}; rerun with its --windows, "
                                 "use --overwrite to replace it or choose another --out")
            diff = config_difference(stored, config)
            if diff:
                raise InputError(f"the cache in {self.path.parent} was made with another configuration "
                                 f"({diff}); use --overwrite to replace it or choose another --out")
        else:
            with self.conn:
                self.conn.execute("BEGIN")
                self.conn.execute("INSERT INTO meta VALUES ('format_version', ?)", (json.dumps(FORMAT_VERSION),))
                self.conn.execute("INSERT INTO meta VALUES ('config', ?)", (json.dumps(config),))

    def done_images(self) -> dict[int, str]:
        """image id → content sha256 of every image stored as done."""
        return dict(self.conn.execute("SELECT image_id, sha256 FROM images WHERE status = 'done'"))

    def write_image(self, image: dict[str, Any], points: list[PointAnn], proposals: list[tuple],
                    embedding: tuple[dict[str, np.ndarray], tuple[int, int], tuple[int, int]] | None = None,
                    extra: Any = None) -> None:
        """Store one image's points, proposals (rows in ``proposals`` column order) and embedding
        (``({name: array}, input (h, w), original (H, W))``, the engine's layout order); ``extra``
        (``connection → None``) writes more in the same transaction (:mod:`.window_cache`)."""
        with self.conn:
            self.conn.execute("BEGIN")
            if extra is not None:
                extra(self.conn)
            self.conn.execute("DELETE FROM proposals WHERE image_id = ?", (image["image_id"],))
            self.conn.execute("DELETE FROM points WHERE image_id = ?", (image["image_id"],))
            self.conn.executemany("INSERT INTO points VALUES (?, ?, ?, ?, ?)",
                                  [(p.ann_id, p.image_id, p.category_id, p.x, p.y) for p in points])
            self.conn.executemany(
                "INSERT INTO proposals VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", proposals)
            if embedding is not None:
                arrays, input_hw, orig_hw = embedding
                blob, shape = pack_embedding(arrays)
                self.conn.execute(
                    "INSERT OR REPLACE INTO embeddings VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (image["image_id"], blob, json.dumps(shape), *input_hw, *orig_hw))
            self.conn.execute(
                "INSERT OR REPLACE INTO images VALUES (?, ?, ?, ?, ?, 'done', NULL, ?, ?, ?)",
                (image["image_id"], image["file_name"], image["sha256"], image["width"], image["height"],
                 len(points), image.get("encoder_s"), image.get("decoder_s")))

    def write_failure(self, image: dict[str, Any], reason: str) -> None:
        """Record that an image failed, with the reason (a rerun tries it again); whatever an
        earlier run stored for it goes (a failed image has no proposals)."""
        with self.conn:
            self.conn.execute("BEGIN")
            for table in ("proposals", "points", "embeddings"):
                self.conn.execute(f"DELETE FROM {table} WHERE image_id = ?", (image["id"],))
            self.conn.execute(
                "INSERT OR REPLACE INTO images VALUES (?, ?, NULL, ?, ?, 'failed', ?, NULL, NULL, NULL)",
                (image["id"], image["file_name"], image["width"], image["height"], reason))

    def close(self) -> None:
        self.conn.close()


def pack_embedding(arrays: dict[str, np.ndarray]) -> tuple[bytes, Any]:
    """fp16 bytes of the arrays in order, and the ``shape`` column (list for one, object for several)."""
    parts = {k: np.ascontiguousarray(v, dtype=np.float16) for k, v in arrays.items()}
    blob = b"".join(p.tobytes() for p in parts.values())
    if list(parts) == ["image_embed"]:
        return blob, list(parts["image_embed"].shape)
    return blob, {k: list(p.shape) for k, p in parts.items()}


def unpack_embedding(blob: bytes, shape: Any) -> dict[str, np.ndarray]:
    """Inverse of :func:`pack_embedding`: float32 arrays by name."""
    shapes = {"image_embed": shape} if isinstance(shape, list) else shape
    flat = np.frombuffer(blob, dtype=np.float16)
    out, at = {}, 0
    for name, shp in shapes.items():
        n = int(np.prod(shp))
        out[name] = flat[at:at + n].reshape(shp).astype(np.float32)
        at += n
    if at != flat.size:
        raise InputError(f"a cached embedding holds {flat.size} values, its shapes {shapes} say {at}")
    return out


# ---- reading -----------------------------------------------------------------------------------

_BAG_COLUMNS = "ann_id, kind, rank, counts, height, width, iou, stability, bx, by, bw, bh"


def _bag(p: PointAnn, props: list[tuple]) -> Bag:
    """A point's bag from its proposal rows (columns :data:`_BAG_COLUMNS`, in bag order)."""
    boxes = xywh_to_xyxy(np.array([r[8:12] for r in props], dtype=np.float64).reshape(-1, 4))
    return Bag(ann_id=p.ann_id, image_id=p.image_id, category_id=p.category_id, point=(p.x, p.y), boxes=boxes,
               rles=[{"size": [r[4], r[5]], "counts": r[3]} for r in props], scores=[r[6] for r in props],
               kinds=[r[1] for r in props], ranks=[r[2] for r in props], stability=[r[7] for r in props])


class CacheReader:
    """All shard files of a cache folder, read together."""

    def __init__(self, cache_dir: str | Path) -> None:
        self.dir = Path(cache_dir)
        files = cache_files(self.dir)
        if not self.dir.is_dir() or not files:
            raise InputError(f"{self.dir} is not a proposal cache (no *.sqlite shard files in it)")
        layouts = shard_layouts(self.dir)
        if len(layouts) > 1:
            names = ", ".join(fs[0].name for _, fs in sorted(layouts.items()))
            raise InputError(f"the cache {self.dir} mixes shard layouts ({names}): its images would "
                             "count twice; keep one layout (rerun sap proposals with --overwrite)")
        self.conns: list[sqlite3.Connection] = []
        config = None
        for f in files:
            try:
                conn = sqlite3.connect(f"file:{f}?mode=ro", uri=True, timeout=60)
                meta = _read_meta(conn)
                conn.execute("SELECT count(*) FROM proposals").fetchone()
            except sqlite3.DatabaseError as e:
                raise InputError(f"{f} is damaged or not a proposal cache ({e})") from None
            if meta.get("format_version") != FORMAT_VERSION or "config" not in meta:
                raise InputError(f"{f} is not a proposal cache of format {FORMAT_VERSION}")
            if config is None:
                config = meta["config"]
            elif (diff := config_difference(config, meta["config"])):
                raise InputError(f"the shard files of {self.dir} disagree ({diff})")
            self.conns.append(conn)
        self.config: dict[str, Any] = config or {}

    def query(self, sql: str, args: tuple = ()) -> Iterator[tuple]:
        for conn in self.conns:
            yield from conn.execute(sql, args)

    def images(self) -> list[dict[str, Any]]:
        """Every image row (dicts), done and failed."""
        cols = ["image_id", "file_name", "sha256", "width", "height", "status", "reason", "n_points",
                "encoder_s", "decoder_s"]
        return [dict(zip(cols, r)) for r in self.query("SELECT * FROM images ORDER BY image_id")]

    def points(self) -> list[PointAnn]:
        return [PointAnn(*r) for r in self.query("SELECT * FROM points ORDER BY ann_id")]

    def bags(self) -> dict[int, list[Bag]]:
        """Bags of every done image, by image id (bags ordered by annotation id).

        Holds every proposal in memory; :meth:`image_bags` reads one image at a time.
        """
        pts = {p.ann_id: p for p in self.points()}
        rows: dict[int, list[tuple]] = {}
        for r in self.query(f"SELECT {_BAG_COLUMNS} FROM proposals ORDER BY ann_id, kind_index, rank"):
            rows.setdefault(r[0], []).append(r)
        out: dict[int, list[Bag]] = {}
        for ann_id in sorted(pts):
            p = pts[ann_id]
            out.setdefault(p.image_id, []).append(_bag(p, rows.get(ann_id, [])))
        return out

    def image_bags(self, image_id: int) -> list[Bag]:
        """The non-empty bags of one image (ordered by annotation id), read through the indexes
        of its shard alone; ``[]`` for an image without proposals."""
        for conn in self.conns:
            rows: dict[int, list[tuple]] = {}
            for r in conn.execute(f"SELECT {_BAG_COLUMNS} FROM proposals WHERE image_id = ? "
                                  "ORDER BY ann_id, kind_index, rank", (image_id,)):
                rows.setdefault(r[0], []).append(r)
            if rows:
                marks = ",".join("?" * len(rows))
                pts = conn.execute(f"SELECT * FROM points WHERE ann_id IN ({marks}) ORDER BY ann_id",
                                   tuple(rows)).fetchall()
                return [_bag(PointAnn(*p), rows[p[0]]) for p in pts]
        return []

    def proposal_image_ids(self) -> list[int]:
        """Ids of the images that have at least one proposal (sorted)."""
        return sorted({r[0] for r in self.query("SELECT DISTINCT image_id FROM proposals")})

    def mask_sizes(self) -> list[tuple[int, int, int, int]]:
        """``(image_id, height, width, first ann_id)`` for every distinct mask size of an image."""
        return list(self.query("SELECT image_id, height, width, MIN(ann_id) FROM proposals "
                               "GROUP BY image_id, height, width"))

    def embedding(self, image_id: int) -> tuple[dict[str, np.ndarray], tuple[int, int], tuple[int, int], str] | None:
        """``({name: float32 array}, input (h, w), original (H, W), image sha256)`` or None."""
        for conn in self.conns:
            row = conn.execute(
                "SELECT e.data, e.shape, e.input_h, e.input_w, e.orig_h, e.orig_w, i.sha256 FROM embeddings e "
                "JOIN images i ON i.image_id = e.image_id WHERE e.image_id = ?", (image_id,)).fetchone()
            if row:
                return unpack_embedding(row[0], json.loads(row[1])), (row[2], row[3]), (row[4], row[5]), row[6]
        return None

    def close(self) -> None:
        for c in self.conns:
            c.close()

    def __enter__(self) -> "CacheReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def load_embedding(cache: str | Path | CacheReader, image_id: int, image_sha256: str, engine: str,
                   checkpoint_sha256: str, device: Any = "cpu"):
    """A cached :class:`~pseudolabel.core.engines.base.ImageEmbedding`, or None if absent or made otherwise.

    The embedding is used only if the cache's engine and checkpoint match and the image file's
    sha256 is the one the cache saw. ``cache`` is a cache folder or an open reader.
    """
    import torch

    from .engines.base import ImageEmbedding
    from .engines.registry import canonical_engine

    reader = cache if isinstance(cache, CacheReader) else CacheReader(cache)
    try:
        cfg = reader.config
        if cfg.get("engine") != canonical_engine(engine) or cfg.get("checkpoint_sha256") != checkpoint_sha256:
            return None
        got = reader.embedding(image_id)
    finally:
        if reader is not cache:
            reader.close()
    if got is None or got[3] != image_sha256:
        return None
    arrays, input_hw, orig_hw, _ = got
    return ImageEmbedding.from_tensors({k: torch.from_numpy(v).to(device) for k, v in arrays.items()},
                                       input_hw, orig_hw)


def check_images_unchanged(cache_dir: str | Path, images_dir: str | Path) -> None:
    """Refuse proposals of images whose files changed since they were cached (content sha256).

    Raises:
        InputError: naming the first changed image and how many there are.
    """
    from .errors import ImageError
    from .images import file_sha256, load_image_rgb

    images_dir = Path(images_dir)
    changed = []
    with CacheReader(cache_dir) as reader:
        for row in reader.images():
            path = images_dir / row["file_name"]
            if row["status"] == "done" and path.is_file() and file_sha256(path) != row["sha256"]:
                try:  # a file that no longer reads is the stage's unreadable image, not new content
                    load_image_rgb(path)
                except ImageError:
                    continue
                changed.append(row)
    if changed:
        raise InputError(f"{len(changed)} images changed since their proposals were cached in {cache_dir} "
                         f"(first: image {changed[0]['image_id']}, {changed[0]['file_name']}); rerun sap "
                         "proposals on that cache first (it recomputes exactly those)")


def dump_cache(cache_dir: str | Path) -> dict[str, Any]:
    """Everything a cache stores except timings, in a canonical order (for comparisons)."""
    with CacheReader(cache_dir) as reader:
        images = [{k: v for k, v in r.items() if k not in ("encoder_s", "decoder_s")} for r in reader.images()]
        points = [tuple(p.__dict__.values()) for p in reader.points()]
        props = sorted(reader.query("SELECT * FROM proposals"))
        embs = sorted(reader.query("SELECT image_id, data, shape FROM embeddings"))
        return {"config": reader.config, "images": images, "points": points, "proposals": props,
                "embeddings": [(i, hashlib.sha256(d).hexdigest(), s) for i, d, s in embs]}
