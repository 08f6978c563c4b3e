"""GPU mip pyramids of a batch of images: `PyramidBatch` (the batch, built together) and `Pyramid`
(one image of it).

Same-size images of a batch share one `GL_TEXTURE_2D_ARRAY` with its full mip chain: one upload
(through a pixel-unpack buffer the context keeps, or device to device from CUDA tensors), one
`glGenerateMipmap` for "hardware", one dispatch per level and pass for "box"/"lanczos" over all
layers. So the GL calls a batch costs depend on its number of distinct sizes, not on its length.
A single image is a batch of one: `Context.pyramid(image)` is `Context.pyramids([image])[0]`.

Convention:
    every layer stores its image's row 0 (its top) first, so GL's texture coordinate t runs down
    the image and uv (0, 0) is the image's top-left corner; level i is max(1, floor(width / 2^i))
    x max(1, floor(height / 2^i)); levels hold the images' own channel count and dtype
    (uint8/uint16 as unorm, float32 as is). Image b of the batch is layer `where[b][1]` of array
    `where[b][0]`.
"""

from __future__ import annotations

import enum
import weakref
from typing import TYPE_CHECKING, Any

import moderngl
import numpy as np

from .errors import ClosedError
from .gl.formats import internal_format, texel_format
from .gl.programs import encode_texels, groups, scratch
from .image_batch import ImageGroup, group_images
from .levels import LANCZOS_A, level_sizes
from .limits import check_compute_build, compute_build_bytes
from .maps import default_max_level

if TYPE_CHECKING:
    import torch

    from .gl.context import GLContext

__all__ = ["PyramidMethod", "PyramidBatch", "Pyramid", "COMPUTE_CHUNK_BYTES"]

# Scratch bytes one box/lanczos pass may use for a chunk of layers: bounds GPU memory for big batches
# while keeping the dispatch count a small multiple of the levels (e.g. 16 layers of 1024² a chunk).
COMPUTE_CHUNK_BYTES = 512 << 20


class PyramidMethod(str, enum.Enum):
    """How the levels below 0 are made."""

    HARDWARE = "hardware"  # glGenerateMipmap: the driver's own filter
    BOX = "box"  # compute: area-weighted 2x2 (3x3 on odd sizes) mean in float
    LANCZOS = "lanczos"  # compute: separable Lanczos-3, sharper than box

    @classmethod
    def parse(cls, value: str | PyramidMethod) -> PyramidMethod:
        try:
            return cls(value)
        except ValueError:
            names = ", ".join(repr(m.value) for m in cls)
            raise ValueError(f"unknown pyramid method {value!r}; choose one of {names}") from None


def _nests(size_above: int, size: int) -> bool:
    """Whether each texel of a level covers whole texels of the level above along this axis."""
    return size_above == 2 * size or size_above == size == 1


class LayerArray:
    """One GL array texture of a batch: `layers` images of one size and format, full mip chain.

    Built by `PyramidBatch`; stages read `name`, `width`, `height`, `sizes`, `channels`, `dtype`,
    `srgb`, `internal`. The texture may have more layers (`capacity`) than images: it comes from the
    context's pool of textures earlier batches of this shape gave back. Given back by
    `PyramidBatch.close()`, or deleted when collected (deferred to the context's thread)."""

    def __init__(self, context: GLContext, group: ImageGroup, method: PyramidMethod, srgb: bool) -> None:
        self.context = context
        self.layers, self.height, self.width, self.channels = group.shape
        self.dtype = np.dtype(group.dtype_name)
        self.srgb = srgb
        self.sizes = level_sizes(self.width, self.height)
        self.internal = internal_format(self.dtype.name, self.channels, srgb)
        self.name, self.capacity = context.take_array_texture(len(self.sizes), self.internal, self.width,
                                                              self.height, self.layers)
        self._finalizer = weakref.finalize(self, context.defer_delete, [self.name])
        try:
            self._upload(group)
            if method is PyramidMethod.HARDWARE:
                context.raw.glGenerateTextureMipmap(self.name)
            else:
                self._build_compute(method)
        except BaseException:
            self.release()
            raise

    @property
    def level_bytes(self) -> int:
        """Bytes of one layer's level 0."""
        return self.width * self.height * self.channels * self.dtype.itemsize

    def _upload(self, group: ImageGroup) -> None:
        """Level 0 of every layer in one glTextureSubImage3D from the context's upload buffer (filled
        by one host write, or device to device from a CUDA tensor)."""
        nbytes = self.layers * self.level_bytes
        ctx = self.context
        if group.on_cuda:
            ctx.registered_buffer("upload", nbytes, int(group.pixels.device.index)).copy_from(group.pixels)
            buffer = ctx.persistent_buffer("upload", nbytes)
        else:
            buffer = ctx.persistent_buffer("upload", nbytes)
            buffer.write(group.pixels)
        ctx.raw.upload_layers(self.name, 0, (self.width, self.height), 0, self.layers, self.channels,
                              self.dtype.name, buffer.glo)

    def _build_compute(self, method: PyramidMethod) -> None:
        """Every level in float, rounded once: decode level 0, two separable passes a level, encode, upload,
        for a chunk of layers at a time (`COMPUTE_CHUNK_BYTES`), each pass one dispatch over the chunk.

        "lanczos" filters the float level above. "box" is the exact area mean of the level-0
        texels a texel covers: from the float level above where both axes halve exactly (the
        footprints nest, so the mean of means is exact), else from level 0 itself (odd sizes).
        """
        per_layer = 2 * compute_build_bytes(self.width, self.height)
        chunk = max(1, min(self.layers, COMPUTE_CHUNK_BYTES // per_layer))
        for first in range(0, self.layers, chunk):
            self._build_chunk(method, first, min(chunk, self.layers - first))

    def _build_chunk(self, method: PyramidMethod, first: int, count: int) -> None:
        ctx = self.context
        gl = ctx.gl
        box = method is PyramidMethod.BOX
        resample = ctx.program(
            "resample.comp", **({"FILTER_BOX": 1} if box else {"FILTER_LANCZOS": 1, "LANCZOS_A": LANCZOS_A})
        )
        decode = ctx.program("decode.comp")
        w0, h0 = self.sizes[0]
        w1, h1 = self.sizes[1] if len(self.sizes) > 1 else (1, 1)
        texel = 16  # vec4 of float32
        with scratch(ctx) as buffers:
            level0 = gl.buffer(reserve=count * w0 * h0 * texel)
            pool = [gl.buffer(reserve=count * w1 * h0 * texel), gl.buffer(reserve=count * w1 * h0 * texel)]
            packed = gl.buffer(reserve=groups(count * w1 * h1 * self.channels * self.dtype.itemsize, 4) * 4)
            buffers += [level0, *pool, packed]
            ctx.raw.glBindTextureUnit(0, self.name)
            try:
                decode["source_texture"] = 0
                decode["size"] = (w0, h0)
                decode["first_layer"] = first
                level0.bind_to_storage_buffer(0)
                decode.run(groups(w0, 16), groups(h0, 16), count)
            finally:
                ctx.raw.glBindTextureUnit(0, 0)
            gl.memory_barrier(moderngl.SHADER_STORAGE_BARRIER_BIT)
            current = level0
            for level, (w, h) in enumerate(self.sizes[1:], start=1):
                sw, sh = self.sizes[level - 1]
                if box and not (_nests(sw, w) and _nests(sh, h)):
                    current, (sw, sh) = level0, (w0, h0)
                current = _resample(resample, current, pool, (sw, sh), (w, sh), 0, count)
                current = _resample(resample, current, pool, (w, sh), (w, h), 1, count)
                encode_texels(ctx, current, packed, count * w * h, self.dtype, self.channels, self.srgb)
                gl.memory_barrier(moderngl.PIXEL_BUFFER_BARRIER_BIT | moderngl.TEXTURE_UPDATE_BARRIER_BIT)
                ctx.raw.upload_layers(self.name, level, (w, h), first, count, self.channels, self.dtype.name,
                                      packed.glo)

    def release(self) -> None:
        """Give the texture back to the context for the next batch of this shape (on the context's thread).
        Safe to call twice."""
        if self._finalizer.detach() is not None and not self.context.closed:
            self.context.give_array_texture(len(self.sizes), self.internal, self.width, self.height, self.name,
                                            self.capacity)


def _resample(program: moderngl.ComputeShader, source: moderngl.Buffer, pool: list[moderngl.Buffer],
              source_size: tuple[int, int], destination_size: tuple[int, int], axis: int,
              layers: int) -> moderngl.Buffer:
    """One separable pass over `layers` layers into a `pool` buffer other than `source`; returns the
    buffer holding the result (`source` itself when the axis keeps its size)."""
    if source_size == destination_size:
        return source
    destination = pool[1] if source is pool[0] else pool[0]
    source.bind_to_storage_buffer(0)
    destination.bind_to_storage_buffer(1)
    program["source_size"] = source_size
    program["destination_size"] = destination_size
    program["axis"] = axis
    program.run(groups(destination_size[0], 16), groups(destination_size[1], 16), layers)
    program.ctx.memory_barrier(moderngl.SHADER_STORAGE_BARRIER_BIT)
    return destination


class PyramidBatch:
    """The mip pyramids of a batch of B images, built together; made by `Context.pyramids(images)`.

    images: a list of images (anything `Context.pyramid` takes; sizes may differ, channel count and
    dtype may not), a BxCxHxW torch tensor (CPU or CUDA: CUDA pixels go to the GPU texture device
    to device, never through the host) or a BxHxWxC numpy array. Same-size images share one array
    texture (`arrays`), so building, relevance and token sampling cost GL calls per distinct size,
    not per image; batches past the device's array-layer limit are split into several arrays.
    `method`, `srgb`: as `Pyramid`. Build once, sample many: `tokens(layouts)`, `level(i)`, and
    `batch[b]` (a `Pyramid` view of image b, no copy) for everything a single pyramid offers.

    Shape: B = len(batch); level i of image b is `(sizes[b][i][1], sizes[b][i][0], C)`.
    """

    def __init__(self, context: GLContext, images: Any, method: str | PyramidMethod = "hardware",
                 srgb: bool = False) -> None:
        context.check_open()
        self.method = PyramidMethod.parse(method)
        if not isinstance(srgb, bool):
            raise TypeError(f"srgb must be a bool, got {srgb!r}")

        def check(shape: tuple[int, int, int, int], dtype_name: str) -> None:
            if srgb and (dtype_name != "uint8" or shape[3] < 3):
                raise ValueError(f"srgb=True needs an 8-bit RGB or RGBA image, got {dtype_name} with "
                                 f"{shape[3]} channel(s); convert them to RGB first or pass srgb=False")
            if self.method is not PyramidMethod.HARDWARE:
                check_compute_build(context, shape[2], shape[1], self.method.value)

        found, count = group_images(images, context.max_texture_size, context.max_array_layers, check)
        first = found[0]
        self.context = context
        self.srgb = srgb
        self.channels = first.shape[3]
        self.dtype = np.dtype(first.dtype_name)
        self.arrays: list[LayerArray] = []
        self._where = np.empty((count, 2), np.int64)
        self._views: weakref.WeakValueDictionary[int, Pyramid] = weakref.WeakValueDictionary()
        self._closed = False
        try:
            for index, group in enumerate(found):
                self.arrays.append(LayerArray(context, group, self.method, srgb))
                self._where[group.indices, 0] = index
                self._where[group.indices, 1] = np.arange(len(group.indices))
        except BaseException:
            self.close()
            raise
        context.adopt(self)

    # -- shape ------------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self._where.shape[0])

    @property
    def where(self) -> np.ndarray:
        """(B, 2) int64: image b is layer `where[b, 1]` of `arrays[where[b, 0]]`."""
        return self._where

    def array_of(self, index: int) -> tuple[LayerArray, int]:
        """The array texture holding image `index`, and its layer there."""
        array, layer = self._where[index]
        return self.arrays[int(array)], int(layer)

    @property
    def image_sizes(self) -> list[tuple[int, int]]:
        """(width, height) of every image, in batch order."""
        sizes = [(a.width, a.height) for a in self.arrays]
        return [sizes[int(a)] for a in self._where[:, 0]]

    @property
    def nbytes(self) -> int:
        """Bytes of texel data over every level of every image."""
        texel = self.channels * self.dtype.itemsize
        return sum(a.layers * sum(w * h for w, h in a.sizes) * texel for a in self.arrays)

    def __getitem__(self, index: int) -> Pyramid:
        """Image `index` as a `Pyramid` (a view of its layer: no copy; valid until this batch closes)."""
        self._check_open()
        if not isinstance(index, (int, np.integer)) or isinstance(index, bool):
            raise TypeError(f"index a PyramidBatch with an int, got {type(index).__name__}")
        if not -len(self) <= index < len(self):
            raise IndexError(f"image {index} of a batch of {len(self)}")
        index = int(index) % len(self)
        view = self._views.get(index)
        if view is None:
            view = Pyramid(self, index)
            self._views[index] = view
        return view

    # -- reading ----------------------------------------------------------------------------
    def level(self, i: int, out: str = "numpy") -> Any:
        """Level `i` of every image, in batch order: for one size a (B, h, w, C) array in the images'
        dtype (numpy, or torch with out="torch"), each array read back in one call; for several sizes
        a list of (h_b, w_b, C) arrays."""
        self._check_open()
        _check_level_request(i, out, min(len(a.sizes) for a in self.arrays), "every image of this batch has")
        import torch

        blocks = []
        for array in self.arrays:
            w, h = array.sizes[i]
            block = torch.empty((array.layers, h, w, self.channels), dtype=getattr(torch, self.dtype.name))
            self.context.raw.read_layers(array.name, int(i), (w, h), 0, array.layers, self.channels,
                                         self.dtype.name, block.data_ptr(), block.numel() * block.element_size())
            blocks.append(block)
        if len(blocks) == 1:
            result: Any = blocks[0]
            return result if out == "torch" else result.numpy()
        images = [blocks[int(a)][int(layer)] for a, layer in self._where]
        return images if out == "torch" else [t.numpy() for t in images]

    # -- sampling ---------------------------------------------------------------------------
    def tokens(self, layouts: Any, patch: int | None = None, filter: str = "trilinear", lod_bias: float = 0.0,
               device: Any = "cpu", out: torch.Tensor | None = None) -> torch.Tensor:
        """The tokens of every image (layout b for image b), packed: (ΣN, C, patch, patch) float32 on
        `device` (or in `out`); one dispatch per array texture. See `glmip.sampling.tokens_batch`."""
        from .sampling import tokens_batch

        return tokens_batch(self, layouts, patch, filter, lod_bias, out=out, device=device)

    def grids(self, levels: Any, patch: int | None = None, **options: Any) -> list[Any]:
        """The patch grids of `levels` of every image: one `glmip.grids.LevelGrid` (B, N_l, C, patch, patch)
        a level, or `LevelImage` (B, C, H_l, W_l) with as_images=True; optionally only the relevant cells
        (masks, or relevance with threshold / budget); one dispatch per array texture. See `glmip.grids.grids`."""
        from .grids import grids

        return grids(self, levels, patch, **options)

    # -- life cycle -------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("this PyramidBatch is closed")
        self.context.check_open()

    def close(self) -> None:
        """Release every texture now (its views included). Safe to call twice. From a thread other than
        its context's it raises `WrongThreadError` and leaves the batch open."""
        if self._closed:
            return
        if not self.context.closed:
            self.context.make_current()
        self._closed = True
        for view in list(self._views.values()):
            view.close()
        for array in self.arrays:
            array.release()

    def __enter__(self) -> PyramidBatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        if self._closed:
            return "glmip.PyramidBatch(closed)"
        sizes = ", ".join(f"{a.layers}x{a.width}x{a.height}" for a in self.arrays)
        return (f"glmip.PyramidBatch({len(self)} images of {self.channels} {self.dtype}, arrays [{sizes}], "
                f"method={self.method.value!r}, srgb={self.srgb}, {self.nbytes / 2**20:.2f} MiB)")


class Pyramid:
    """A GPU mip pyramid of one image: a view of one layer of a `PyramidBatch`.

    Made by `Context.pyramid(image, method, srgb)` (a batch of one that this pyramid owns and closes)
    or by `batch[b]` (the batch owns it). `method`: "hardware" (glGenerateMipmap, default), "box" or
    "lanczos" (compute shaders filtering in float from the unrounded level above). `srgb=True` (8-bit
    RGB/RGBA only) stores the texture as sRGB so every method filters in linear light. Released by
    `close()`, with its context, or when garbage-collected.
    """

    @classmethod
    def of(cls, context: GLContext, image: Any, method: str | PyramidMethod = "hardware",
           srgb: bool = False) -> Pyramid:
        """The pyramid of one image (anything `glmip.image.as_image_array` reads, or a CUDA CxHxW tensor,
        which stays on its device): a batch of one that the pyramid owns."""
        from .image import as_image_array

        if type(image).__module__.startswith("torch") and getattr(image, "is_cuda", False) \
                and image.ndim == 3 and 1 <= image.shape[0] <= 4:
            single: Any = image[None]
        else:
            single = as_image_array(image, max_side=context.max_texture_size)[None]
        batch = PyramidBatch(context, single, method=method, srgb=srgb)
        try:
            return cls(batch, 0, owns_batch=True)
        except BaseException:
            batch.close()
            raise

    def __init__(self, batch: PyramidBatch, index: int, owns_batch: bool = False) -> None:
        self.batch = batch
        self.index = index
        self._owns_batch = owns_batch
        self._array, self.layer = batch.array_of(index)
        self.context = batch.context
        self.method = batch.method
        self.width, self.height = self._array.width, self._array.height
        self.channels, self.dtype, self.srgb = batch.channels, batch.dtype, batch.srgb
        self.sizes = self._array.sizes
        self._texture: moderngl.Texture | None = None
        self._names: list[int] = []  # the layer view's GL name once made (lazily, by `texture`)
        self._finalizer = weakref.finalize(self, batch.context.defer_delete, self._names)
        self._closed = False
        batch.context.adopt(self)

    @property
    def array(self) -> LayerArray:
        """The batch array texture holding this image (at layer `layer`)."""
        return self._array

    @property
    def levels(self) -> int:
        """Number of mip levels (level 0 is the image itself)."""
        return len(self.sizes)

    @property
    def texture(self) -> moderngl.Texture:
        """A 2-D GL texture (moderngl) of this image's layer, every level (a texture view: no copy);
        made on first use, valid until `close()`."""
        self._check_open()
        if self._texture is None:
            name = self.context.create_layer_view(self._array.name, self._array.internal, self.levels, self.layer)
            self._names.append(name)
            texture = self.context.gl.external_texture(name, (self.width, self.height), self.channels, 0,
                                                       texel_format(self.dtype.name).moderngl)
            texture.filter = (moderngl.LINEAR_MIPMAP_LINEAR, moderngl.LINEAR)
            texture.repeat_x = texture.repeat_y = False
            self._texture = texture
        return self._texture

    @property
    def nbytes(self) -> int:
        """Bytes of texel data over all levels in the texture's internal format (~4/3 of level 0)."""
        texel = self.channels * self.dtype.itemsize
        return sum(w * h * texel for w, h in self.sizes)

    def level(self, i: int, out: str = "numpy") -> Any:
        """Level `i` as `HxWxC` in the image's dtype, row 0 the image's top; `out` "numpy" or "torch"."""
        self._check_open()
        _check_level_request(i, out, self.levels, "this pyramid has")
        from .bridge import level_to_tensor

        tensor = level_to_tensor(self, int(i)).tensor
        return tensor if out == "torch" else tensor.numpy()

    @property
    def default_max_level(self) -> int:
        """The coarsest level relevance maps send the periphery to by default: 5 (1/32 scale) or the last."""
        return default_max_level(self.levels)

    # -- sampling (conveniences: the operations live in glmip.sampling) --------------------
    def sample(self, *args: Any, **options: Any) -> Any:
        """`glmip.sampling.sample(self, uv, lod, ...)`: N points in one dispatch, (N, C) float32."""
        from .sampling import sample

        return sample(self, *args, **options)

    def tokens(self, *args: Any, **options: Any) -> Any:
        """`glmip.sampling.tokens(self, layout, patch, filter, ...)`: torch (N, C, patch, patch) float32."""
        from .sampling import tokens

        return tokens(self, *args, **options)

    def render(self, *args: Any, **options: Any) -> Any:
        """`glmip.sampling.render(self, lod_map, ...)`: the image composited at per-pixel levels."""
        from .sampling import render

        return render(self, *args, **options)

    def warp(self, matrix: Any, size: tuple[int, int], **options: Any) -> Any:
        """This image through homography `matrix` (output pixel -> input pixel; (3, 3) or (B, 3, 3)) into
        `size` = (width, height), rasterized: torch float32 (B, C, height, width). See `glmip.warp.warp`."""
        from .warp import warp

        return warp(self, matrix, size, **options)

    # -- life cycle ---------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("this Pyramid is closed")
        self.batch._check_open()

    def close(self) -> None:
        """Release the texture now (the whole batch of one, for `Context.pyramid`'s). Safe to call twice.
        From a thread other than its context's it raises `WrongThreadError` and leaves the pyramid open
        (only that thread can delete it)."""
        if self._closed:
            return
        if not self.context.closed:
            self.context.make_current()
        self._closed = True
        if self._texture is not None:
            self._texture.release()
            self._texture = None
        self._finalizer.detach()
        if not self.context.closed:
            self.context.delete_textures(self._names)
        self._names.clear()
        if self._owns_batch:
            self.batch.close()

    def __enter__(self) -> Pyramid:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{self.levels} levels, {self.nbytes / 2**20:.2f} MiB"
        return (f"glmip.Pyramid({self.width}x{self.height}x{self.channels} {self.dtype}, "
                f"method={self.method.value!r}, srgb={self.srgb}, {state})")


def _check_level_request(i: Any, out: Any, levels: int, owner: str) -> None:
    """`level(i, out)`'s checks: `i` an int in 0..levels-1, `out` "numpy" or "torch"."""
    if not isinstance(i, (int, np.integer)) or isinstance(i, bool):
        raise TypeError(f"level index must be an int, got {type(i).__name__}")
    if not 0 <= i < levels:
        raise ValueError(f"level {i} does not exist; {owner} levels 0..{levels - 1}")
    if out not in ("numpy", "torch"):
        raise ValueError(f"out must be 'numpy' or 'torch', got {out!r}")
