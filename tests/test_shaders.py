"""The shader loader: includes, defines, #line numbering, loud failures."""

from __future__ import annotations

import pytest

from glmip.gl import shaders


def test_every_shader_file_compiles(ctx):
    variants = {
        "decode.comp": [{}],
        "resample.comp": [{"FILTER_BOX": 1}, {"FILTER_LANCZOS": 1, "LANCZOS_A": 3}],
        "encode.comp": [{f: 1, "CHANNELS": c, "SRGB": 0} for f in ("FORMAT_UNORM8", "FORMAT_UNORM16", "FORMAT_FLOAT32")
                        for c in (1, 4)],
        "sample.comp": [{"CHANNELS": 3}, {"CHANNELS": 1, "LOD_SOURCE_LOD": 1}, {"CHANNELS": 4, "LOD_SOURCE_GRAD": 1},
                        {"CHANNELS": 2, "SHADER_ANISO": 1}],
        "render.comp": [{}],
        "tokens.comp": [{"CHANNELS": 3, "IMAGES": 1}, {"CHANNELS": 4, "SHADER_ANISO": 1, "IMAGES": 16}],
        "relevance_base.comp": [{}],
        "relevance_reduce.comp": [{}],
        "saliency.comp": [{"CHANNELS": 1}, {"CHANNELS": 3}],
        "grids.comp": [{"CHANNELS": 1}, {"CHANNELS": 4}],
        "detail.comp": [{"CHANNELS": 1}, {"CHANNELS": 3}],
    }
    on_disk = {p.name for p in shaders.shader_dir().glob("*.comp")}
    assert on_disk == set(variants), "a shader file without a compile test"
    for name, defines_list in variants.items():
        for defines in defines_list:
            assert ctx.program(name, **defines) is ctx.program(name, **defines)


def test_source_resolves_includes_with_line_directives():
    text = shaders.source("encode.comp", {"FORMAT_UNORM8": 1, "CHANNELS": 4, "SRGB": 1})
    assert text.startswith("#version 450 core\n")
    assert "#define CHANNELS 4" in text
    assert "uint flat_invocation_index()" in text
    assert "#line 1 1" in text and "#include" not in text.split("// files:")[1].replace('#include "', "")


def test_missing_shader_and_bad_define_fail_loudly():
    with pytest.raises(FileNotFoundError, match="nope.comp"):
        shaders.source("nope.comp")
    with pytest.raises(ValueError, match="upper-case"):
        shaders.source("decode.comp", {"lower": 1})


def test_compile_error_names_the_shader(ctx):
    with pytest.raises(RuntimeError, match="resample.comp"):
        ctx.program("resample.comp")  # neither filter defined: #error
