"""`nestkit report`: one self-contained HTML page (and PNGs) that shows a run instead of telling it.

run_data.py    the run folder read into tables (metrics, batch logs, quarantine, incidents, ...)
ranks.py       per-rank step time: data wait, compute, waits for peers; stragglers in words
events.py      every incident on one step axis: stalls, anomalies, resumes, world-size changes
plotting.py    matplotlib behind the optional extra `nestkit[report]` (Agg, no display)
figures.py     the run's figures
batch_view.py  one batch seen and heard: log-mel of clean and noisy audio, masks, mixed segments; WAVs
page.py        the HTML page: figures as data: URIs, tables, no network, no script
build.py       all of it for one run folder (also on a live run: it reads whatever is there)
"""
