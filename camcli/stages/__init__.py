"""Device-agnostic stages of the per-image path, written with torch ops that take a ``device``.

decode (JPEG bytes -> RGB tensor, EXIF orientation applied; nvJPEG on CUDA) -> view (resize
+ centre crop of the region the model sees) -> draw (the map upsampled onto that region,
colormap, alpha blend) -> encode (JPEG). The same functions run on CPU tensors, so the CPU
tests exercise the code the GPU runs; any file the tensor decoder cannot take falls back, per
file, to ``camcli.images.load_image``.
"""
