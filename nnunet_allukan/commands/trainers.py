"""``nnUNetv2_allukan_trainers [NAME]``: every trainer of nnunet-allukan (``-tr NAME`` of nnUNetv2_train and
nnUNetv2_predict), grouped, one line each with what it changes; given a NAME, that trainer's line, or, for a name
that is none of them, the closest names and a non-zero exit."""
from __future__ import annotations

import argparse
import sys

from nnunet_allukan.training.trainers import TRAINER_GROUPS, TRAINER_NAMES, closest_trainer_names, describe_trainer

COMMAND = "nnUNetv2_allukan_trainers"


def trainer_list() -> str:
    width = max(len(name) for name in TRAINER_NAMES) + 2
    lines = [f"{len(TRAINER_NAMES)} trainers of nnunet-allukan: nnUNetv2_train DATASET CONFIGURATION FOLD -tr NAME "
             "(-device cpu without a CUDA GPU). nnU-Net names the results folder after the trainer's class, "
             "NAME__PLANS__CONFIGURATION; a second name (\"= NAME\") shares its trainer's folder."]
    for title, names in TRAINER_GROUPS.items():
        lines += ["", f"{title}:"] + [f"  {name:<{width}}{describe_trainer(name)}" for name in names]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=COMMAND, description="List the trainers of nnunet-allukan, grouped, with what each changes; or check one "
                                  "name (the closest names if it is none of them).")
    parser.add_argument("name", nargs="?", help="a trainer name to check, e.g. nnUNetTrainerAllUKAN")
    args = parser.parse_args(argv)
    if args.name is None:
        print(trainer_list())
        return 0
    if args.name in TRAINER_NAMES:
        print(f"{args.name}: {describe_trainer(args.name)}")
        return 0
    close = closest_trainer_names(args.name)
    hint = f"the closest: {', '.join(close)}" if close else "no name of nnunet-allukan is close to it"
    print(f"{COMMAND}: {args.name} is not a trainer of nnunet-allukan; {hint}. All of them: {COMMAND}",
          file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
