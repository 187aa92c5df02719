"""The contract that training (model/), export (export/) and serving (service/) share.

* ``schema``: the feature schema, its vocabularies and shapes (no third-party imports).
* ``onnx_io``: the inputs, output and metadata keys of the exported graphs (no third-party imports).
* ``dataset``: the one validator of MicroLens-format parquet folders (pyarrow and numpy).

Torch-free on purpose: the serving install imports ``schema`` and ``onnx_io`` and has no torch;
only the bulk feature load and training read parquet, so only ``dataset`` needs pyarrow.
"""
