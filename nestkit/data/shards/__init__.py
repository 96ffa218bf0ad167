"""Shards: tar files of audio (lhotse Shar, NeMo tarred datasets), local or over HTTP(S).

One job per module:

* `ranged`       -- byte-range reads and `stat` of a local path or an http(s) URL, bounded and retried;
* `tar_index`    -- a member index of one tar (name -> data offset, size), its findings, its file;
* `nemo_tarred`  -- NeMo's path expansion and its rules for matching manifest lines to tar members;
* `shar`         -- a lhotse Shar directory: its shards, its cut lines, each cut's member;
* `member_audio` -- one member's bytes -> mono float32 at the target rate (the rules of data/audio.py);
* `write`        -- writing Shar (with lhotse's own writer) and NeMo's tarred layout, indexes alongside.

A cut in a shard is addressed as `MemberAddress(shard, name, offset, size)`: one ranged read returns its
bytes, wherever the shard lives.
"""
