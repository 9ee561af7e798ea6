"""One module per file format, each exposing a `SCANNER`. `FORMATS` is the detection order:
formats with an unambiguous magic number first, then those recognised by structure."""

from bastion.supplychain.scan.formats import (
    compressed,
    gguf,
    hdf5,
    numpy_file,
    onnx_file,
    pickle_file,
    safetensors_file,
    tar_container,
    zip_container,
)
from bastion.supplychain.scan.formats.base import HEAD_BYTES, FormatScanner

FORMATS: list[FormatScanner] = [
    numpy_file.SCANNER,
    hdf5.SCANNER,
    gguf.SCANNER,
    compressed.SCANNER,
    tar_container.SCANNER,
    zip_container.SCANNER,
    safetensors_file.SCANNER,
    pickle_file.SCANNER,
    onnx_file.SCANNER,
]

__all__ = ["FORMATS", "HEAD_BYTES", "FormatScanner"]
