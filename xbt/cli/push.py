"""``xbt push``: upload a saved adapter folder (with its model card) to the Hugging Face Hub."""

from __future__ import annotations

from ..adapters.hub import push_folder
from .common import check_repo_id


def register(sub) -> None:
    p = sub.add_parser("push", help="upload a saved adapter folder (with its model card) to the Hugging Face Hub")
    p.add_argument("--adapter", required=True, help="folder written by save_pretrained / xbt fit")
    p.add_argument("--repo", required=True, help="Hub repo id, e.g. org/xbt-l14-to-b32")
    p.add_argument("--private", action="store_true")
    p.add_argument("--token", default=None, help="Hub token (default: the logged-in one)")
    p.set_defaults(func=run)


def run(args) -> int:
    check_repo_id(args.repo, "--repo")  # before anything reaches the network
    url = push_folder(args.adapter, args.repo, private=args.private, token=args.token)
    print(f"pushed {args.adapter} to {url}")
    return 0
