"""HTML reports, one self-contained page each, for looking at maps rather than reading logs.

* ``run``: ``OUT/report.html`` for a ``camcli run`` (``--report``, or ``camcli report OUT``
  later), rebuilt from the manifest, with thumbnails (``thumbs``) in ``OUT/report-thumbs/``.
* ``check``: the page of a ``camcli check`` (``--report FILE``): every case, its expectations,
  its overlay with boxes and peak, the baseline's beside it.
* ``evaluation``: the page of a ``camcli evaluate`` result: metric table and curves.

``page`` holds what they share: escaping (every text; links relative and URL-quoted), the
page frame with its inline style, and the JSON data island the run page's script reads.
The submodules are imported where used; this package imports nothing itself.
"""
