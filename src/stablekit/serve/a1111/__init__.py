"""A1111-compatible `/sdapi/v1` API on stablekit's job queue (routes.py: `router`; jobs.py: the
"a1111.txt2img" / "a1111.img2img" job kinds). See docs/serving-a1111.md."""
