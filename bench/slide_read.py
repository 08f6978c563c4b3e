"""Benchmark: glmip's slide tile reader against the libraries that could replace it, on the reads `Slide` makes.

glmip reads a TIFF slide's pixels itself (`glmip.slides.reader.TiffReader`): each file tile decoded by tifffile
(`TiffPage.decode`), kept in its own byte-bounded LRU, regions assembled from the tiles. The candidates:

* ``tiffslide``: `tiffslide.TiffSlide.read_region(..., as_array=True)`, tifffile's zarr store read through
  zarr, no decoded-tile cache (zarr 3 has none built in);
* ``zarr-cache``: the same store (`tifffile.TiffPageSeries.aszarr`) behind zarr's `CacheStore`
  (`zarr.experimental.cache_store`, zarr >= 3.1.4) in a `MemoryStore` with glmip's cache size, so decoded tiles
  are cached as glmip caches them.

What is replayed: the reads glmip makes for the bench.slide configuration ``glmip-1024`` (`ctx.slide(path)`,
`tissue()`, `allocate(mask, 1024)`, `tokens(layout)`) followed by what the viewer does at 1:1 and 2:1 (`render`
of a 1024-px and a 2048-px square at the first tissue cell, into 1024 x 1024), recorded once in a fresh process
by wrapping `TiffReader.read`: halo'd GPU tiles (2052 px reads over 512-px file tiles), 256-row bands of the
area means that make levels between stored ones, the thumbnail. Two slides: bench.slide's generated
100,000 x 80,000 deflate TIFF (background tiles constant, cheap to decode) and a generated 12,288 x 12,288 JPEG
TIFF textured in every tile (3 levels at 4x; decoding costs what a scanned H&E tile costs). Each reader
replays the trace in its own fresh process (cold), `--repeats` times interleaved, best kept; every reader's
pixels are hashed and compared with glmip's (`same_pixels`). Results: `bench/results/slide-read-<device>.json`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

READERS = ("glmip", "zarr-cache", "tiffslide")
BUDGET = 1024
CACHE_BYTES = 256 << 20  # glmip's default (glmip.slides.reader.DEFAULT_CACHE_BYTES)


def write_textured_slide(path: Path, side: int = 12288, tile: int = 512, seed: int = 0) -> None:
    """A 3-level (4x steps) pyramidal tiled JPEG TIFF of 8-px colour blocks plus noise in every tile."""
    import tifffile

    rng = np.random.default_rng(seed)
    blocks = rng.integers(60, 230, (side // 8, side // 8, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1)
    pixels = np.clip(blocks.astype(np.int16) + rng.integers(-20, 21, blocks.shape, dtype=np.int16), 0, 255)
    pixels = pixels.astype(np.uint8)
    options = {"tile": (tile, tile), "compression": "jpeg", "photometric": "rgb"}
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        tif.write(pixels, subifds=2, **options)
        for factor in (4, 16):
            tif.write(np.ascontiguousarray(pixels[::factor, ::factor]), subfiletype=1, **options)


def record_trace(path: str, out: str) -> dict:
    """Run glmip-1024 on `path` with `TiffReader.read` wrapped; write its reads (level, x, y, w, h) to `out`."""
    import glmip
    from glmip.slides.reader import TiffReader

    reads: list[tuple[int, int, int, int, int]] = []
    original = TiffReader.read

    def recording(self: TiffReader, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        reads.append((level, x, y, w, h))
        return original(self, level, x, y, w, h)

    TiffReader.read = recording  # type: ignore[method-assign]
    with glmip.Context() as ctx, ctx.slide(path) as slide:
        mask = slide.tissue()
        layout = slide.allocate(mask, BUDGET)
        slide.tokens(layout)
        row, column = (int(v[0]) for v in np.nonzero(mask))
        x0, y0 = column * slide.width / mask.shape[1], row * slide.height / mask.shape[0]
        for side in (1024, 2048):
            slide.render(size=(1024, 1024), region=(x0 / slide.width, y0 / slide.height, (x0 + side) / slide.width,
                                                    (y0 + side) / slide.height))
        device = str(ctx.info()["renderer"])
        stored = [(lv.width, lv.height) for lv in slide.stored_levels]
    Path(out).write_text(json.dumps({"reads": reads, "stored": stored}))
    return {"reads": len(reads), "device": device}


def replay(reader: str, path: str, trace: str) -> dict:
    """Time `reader` over the recorded reads of `trace` (cold, this process, after its imports: open and reads);
    hash the pixels it returns."""
    import tifffile
    import tiffslide
    import zarr
    from zarr.experimental.cache_store import CacheStore
    from zarr.storage import MemoryStore

    from glmip.slides.reader import TiffReader

    recorded = json.loads(Path(trace).read_text())
    reads, stored = recorded["reads"], [tuple(s) for s in recorded["stored"]]
    start = time.perf_counter()
    stats: dict = {}
    if reader == "glmip":
        slide = TiffReader(path, CACHE_BYTES)
        read = slide.read
    elif reader == "tiffslide":
        slide = tiffslide.TiffSlide(path)
        index = [list(slide.level_dimensions).index(size) for size in stored]
        downsamples = slide.level_downsamples

        def read(level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
            at = index[level]
            location = (round(x * downsamples[at]), round(y * downsamples[at]))
            return slide.read_region(location, at, (w, h), as_array=True)
    else:
        tif = tifffile.TiffFile(path)
        group = zarr.open_group(CacheStore(tif.series[0].aszarr(), cache_store=MemoryStore(), max_size=CACHE_BYTES),
                                mode="r")
        arrays = [group[str(k)] for k in range(len(tif.series[0].levels))]
        sizes = [(a.shape[1], a.shape[0]) for a in arrays]
        levels = [arrays[sizes.index(size)] for size in stored]

        def read(level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
            return levels[level][y:y + h, x:x + w]
    digest = hashlib.sha256()
    hash_seconds = 0.0
    for level, x, y, w, h in reads:
        pixels = read(level, x, y, w, h)
        t0 = time.perf_counter()
        digest.update(np.ascontiguousarray(pixels).tobytes())
        hash_seconds += time.perf_counter() - t0
    seconds = time.perf_counter() - start - hash_seconds
    if reader == "glmip":
        stats = {"tiles_decoded": slide.cache.misses, "cache_hits": slide.cache.hits}
    return {"reader": reader, "seconds": seconds, "reads": len(reads), "sha256": digest.hexdigest(), **stats}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="fresh-process runs per reader and slide (best kept)")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON path (default bench/results/slide-read-<device>.json)")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    parser.add_argument("--trace", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        result = (record_trace(args.path, args.trace) if args.one == "trace"
                  else replay(args.one, args.path, args.trace))
        print(json.dumps(result))
        return
    from bench.harness import environment, version_of, write_report
    from glmip.slides.synthetic import write_synthetic_slide

    def one(config: str, path: Path, trace: Path) -> dict:
        run = subprocess.run([sys.executable, "-m", "bench.slide_read", "--one", config, "--path", str(path),
                              "--trace", str(trace)], capture_output=True, text=True, check=True,
                             cwd=Path(__file__).resolve().parents[1])
        return json.loads(run.stdout.strip().splitlines()[-1])

    slides = {}
    device = None
    with tempfile.TemporaryDirectory() as folder:
        deflate = write_synthetic_slide(Path(folder) / "deflate.tif").path
        textured = Path(folder) / "jpeg.tif"
        write_textured_slide(textured)
        for name, path in (("deflate-100000x80000", deflate), ("jpeg-textured-12288", textured)):
            trace = Path(folder) / f"{name}.json"
            recorded = one("trace", path, trace)
            device = recorded["device"]
            runs: dict[str, list[dict]] = {reader: [] for reader in READERS}
            for _ in range(args.repeats):
                for reader in READERS:
                    runs[reader].append(one(reader, path, trace))
            reference = runs["glmip"][0]["sha256"]
            results = []
            for timed in runs.values():
                best = min(timed, key=lambda r: r["seconds"])
                best["seconds_all"] = [r["seconds"] for r in timed]
                best["same_pixels"] = all(r["sha256"] == reference for r in timed)
                results.append(best)
            for result in results:
                result["time_vs_glmip"] = result["seconds"] / results[0]["seconds"]
                print(f"{name}: {result['reader']:10s} {result['seconds']:.3f} s ({result['time_vs_glmip']:.2f}x "
                      f"glmip) same pixels: {result['same_pixels']}")
            slides[name] = {"file_bytes": path.stat().st_size, "reads": recorded["reads"], "results": results}
    trace = f"glmip-{BUDGET} (tissue, allocate, tokens), render 1:1 and 2:1 into 1024 x 1024"
    report = {"benchmark": "slide-read", "device": device,
              "environment": environment(tifffile=version_of("tifffile"), tiffslide=version_of("tiffslide"),
                                         zarr=version_of("zarr"), imagecodecs=version_of("imagecodecs")),
              "trace": trace, "cache_bytes": CACHE_BYTES, "slides": slides}
    print(f"wrote {write_report(report, 'slide-read', args.out)}")


if __name__ == "__main__":
    main()
