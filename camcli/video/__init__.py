"""Videos in, heatmap videos out: decode with sampling (``decode``), encode a browser-playable
MP4 with the source's audio (``encode``), the per-frame maps smoothed and streamed to disk with
their predictions (``maps``), and one video's frames through the batched explain step
(``work``).

PyAV (``av``, whose wheels bundle FFmpeg with libx264, libvpx, AAC and Opus) is imported by
those modules only, so a run of images never pays for it. What a video is (its suffixes)
lives in ``camcli.sources``, with what an image is.
"""
