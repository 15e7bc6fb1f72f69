"""The download Job's entrypoint, argument-compatible with KServe's storage-initializer:

    python cmd/download.py <src_uri> <dest_path>

Credentials and endpoints come from the environment (HF_TOKEN, HF_ENDPOINT, AWS_*, S3_*,
STORAGE_CONFIG, STORAGE_OVERRIDE_CONFIG); see docs/download.md. Exit codes name the failure reason.
"""

from __future__ import annotations

import argparse
import sys

from localcache.storage import run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="localcache-download", description=__doc__.splitlines()[0])
    parser.add_argument(
        "src_uri", help="hf://owner/model[:revision], s3://bucket/prefix, gs://, https://, or a local path"
    )
    parser.add_argument("dest_path", help="directory to publish the model into (e.g. /mnt/models)")
    # The storage-initializer accepts extra (src, dest) pairs; a Job for the local cache sends one.
    args, extra = parser.parse_known_args(argv)
    if len(extra) % 2 or any(e.startswith("-") for e in extra):
        parser.error("arguments must come in <src_uri> <dest_path> pairs")
    pairs = [(args.src_uri, args.dest_path), *zip(extra[::2], extra[1::2], strict=True)]
    for src, dest in pairs:
        code = run(src, dest)
        if code:
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
