"""``glmha study``: attention variants trained side by side over seeds, with means, spreads and paired differences."""
from __future__ import annotations

import argparse

from .common import CommandError

HELP = "train attention variants side by side over seeds on built-in tasks; means, spreads and paired differences"
EXAMPLES = (
    "glmha study\n  glmha study --tasks deraining --variants csa glmha glmha:rank_ratio=0.25 --seeds 5\n"
    "  glmha study --budget tiny --output /tmp/study  # seconds, for a try\n"
    "  glmha study --jobs 8 --devices cuda:0 cuda:1 cuda:2 cuda:3 cuda:4 cuda:5 cuda:6 cuda:7  # 8 runs at once\n"
    "  glmha study --executor slurm --slurm-partition gpu --time-limit 120 --no-wait  # one Slurm job per run\n"
    "  glmha study --status glmha-study  # each run: done, queued, running, failed or missing"
)

# What Ctrl-C or SIGTERM leaves, printed after "interrupted; " (formatted with the arguments).
INTERRUPTED = (
    "finished runs are kept in {output} and a stopped run resumes from its last checkpoint: "
    "run the same command again to continue"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from .choices import BUDGETS, STUDY_TASKS as DEFAULT_TASKS, STUDY_VARIANTS as DEFAULT_VARIANTS

    parser.add_argument("--output", default="glmha-study", help="study folder (default: glmha-study); an existing one is resumed")
    parser.add_argument("--tasks", nargs="+", default=list(DEFAULT_TASKS),
                        help=f"built-in tasks (default: {' '.join(DEFAULT_TASKS)}; also real_cassi)")
    parser.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS),
                        help="attentions and options, e.g. csa glmha glmha:rank_ratio=0.25 glmha:calibration=false glmha:ranks=suggest")
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds, 0 .. N-1 (default: 3)")
    parser.add_argument("--budget", choices=list(BUDGETS), default="default", help="the demo's training budgets (default: default)")
    parser.add_argument("--reference", default=None, help="the variant differences are taken against (default: the first)")
    parser.add_argument("--test-images", type=int, default=16, help="held-out images per task (default: 16)")
    parser.add_argument("--iterations", type=int, default=None,
                        help="training iterations per model instead of the budget's (the schedule runs to its end)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cpu)")

    where = parser.add_argument_group("where the runs go (the numbers do not depend on it, for the same --threads)")
    where.add_argument("--jobs", type=int, default=None,
                       help="runs at once, each in its own process (default: 1, or one per --devices entry); "
                            "with --executor: jobs at once (default: local one per device, slurm no limit)")
    where.add_argument("--devices", nargs="+", default=None, metavar="DEVICE",
                       help="devices the runs at once take in turn, e.g. cuda:0 cuda:1 (default: --device)")
    where.add_argument("--threads", type=int, default=None,
                       help="CPU threads per run (default: PyTorch's; with --jobs or --executor local: the cores shared out)")
    where.add_argument("--executor", choices=["local", "slurm"], default=None,
                       help="submit each run as a job through submitit: slurm, or local (this machine); needs glmha[cluster]")
    where.add_argument("--no-wait", action="store_true", help="with --executor: submit and return; check with --status")
    where.add_argument("--status", default=None, metavar="FOLDER",
                       help="show each run of the study in FOLDER (done, queued, running, failed, missing) and write the "
                            "report once all are done; trains nothing")
    slurm = parser.add_argument_group("Slurm jobs (--executor slurm)")
    slurm.add_argument("--slurm-partition", default=None, help="partition of the jobs")
    slurm.add_argument("--slurm-account", default=None, help="account the jobs are charged to")
    slurm.add_argument("--gpus-per-job", type=int, default=None, help="GPUs per job (default: 1; 0 trains on the CPU)")
    slurm.add_argument("--time-limit", type=int, default=None, help="minutes per job (default: 240; also --executor local)")
    slurm.add_argument("--slurm", action="append", default=[], metavar="KEY=VALUE",
                       help="more #SBATCH options, e.g. --slurm qos=high --slurm mem=32G (repeatable)")


def _devices(args: argparse.Namespace) -> list[str] | None:
    from .common import check_device

    if args.devices and args.device:
        raise CommandError("give --device or --devices, not both")
    for text in args.devices or []:
        try:
            check_device(text)
        except CommandError as err:
            raise CommandError(str(err).replace("--device ", "--devices ", 1)) from None
    return args.devices


def _cluster(args: argparse.Namespace):
    from ..experiments.study_jobs import ClusterOptions

    slurm_only = {"--slurm-partition": args.slurm_partition, "--slurm-account": args.slurm_account,
                  "--gpus-per-job": args.gpus_per_job, "--slurm": args.slurm or None}
    given = [name for name, value in slurm_only.items() if value is not None]
    if given and args.executor != "slurm":
        raise CommandError(f"{given[0]} applies to Slurm jobs: add --executor slurm")
    if args.time_limit is not None and args.executor is None:
        raise CommandError("--time-limit applies to jobs: add --executor slurm or --executor local")
    if args.gpus_per_job is not None and args.gpus_per_job < 0:
        raise CommandError(f"--gpus-per-job must be 0 or more, got {args.gpus_per_job}")
    if args.time_limit is not None and args.time_limit < 1:
        raise CommandError(f"--time-limit must be at least 1 minute, got {args.time_limit}")
    extra = {}
    for item in args.slurm:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or key.strip().startswith("-"):
            raise CommandError(f"--slurm takes KEY=VALUE (an sbatch option without its dashes, e.g. qos=high), got {item!r}")
        extra[key.strip()] = value.strip()
    options = ClusterOptions(partition=args.slurm_partition, account=args.slurm_account, extra=extra)
    if args.gpus_per_job is not None:
        options.gpus_per_job = args.gpus_per_job
    if args.time_limit is not None:
        options.time_limit = args.time_limit
    return options


def _status(folder: str) -> None:
    from ..experiments.study import study_status
    from ..experiments.study_report import format_status

    states, report = study_status(folder)
    print(format_status(states, folder))
    if report is not None:
        print(f"all runs done; report: {report.markdown}, {report.json}, {report.figure}")


def run(args: argparse.Namespace) -> None:
    from ..experiments.study import StudyFailed, run_study

    if args.status is not None:
        try:
            return _status(args.status)
        except ValueError as err:
            raise CommandError(str(err)) from None
    if args.seeds < 1:
        raise CommandError(f"--seeds must be at least 1, got {args.seeds}")
    if args.jobs is not None and args.jobs < 1:
        raise CommandError(f"--jobs must be at least 1, got {args.jobs}")
    if args.threads is not None and args.threads < 1:
        raise CommandError(f"--threads must be at least 1, got {args.threads}")
    if args.no_wait and args.executor is None:
        raise CommandError("--no-wait needs --executor slurm or --executor local: the runs of --jobs end with this command")
    devices = _devices(args)
    if devices and args.executor == "slurm":
        raise CommandError("--devices chooses devices of this machine; Slurm jobs get theirs with --gpus-per-job")
    cluster = _cluster(args)
    jobs = args.jobs if args.jobs is not None or args.executor else len(devices or [None])
    try:
        result = run_study(args.output, args.tasks, args.variants, args.seeds, args.budget, args.device or "cpu", args.reference,
                           test_images=args.test_images, iterations=args.iterations, jobs=jobs, devices=devices,
                           threads=args.threads, executor=args.executor, cluster=cluster, wait=not args.no_wait)
    except (ValueError, ImportError, StudyFailed) as err:
        raise CommandError(str(err)) from None
    if not result.complete:
        waiting = sum(state.state == "missing" for state in result.pending)
        print(f"\n{len(result.submitted)} job(s) submitted ({' '.join(result.submitted) or 'none'}); "
              f"{len(result.pending)} run(s) not done yet" + (f", {waiting} of them waiting for their reference run" if waiting else "")
              + f".\nCheck with: glmha study --status {args.output}\nThen run this command again without --no-wait (or "
              "with it, to submit what waited): finished runs are kept, failed ones resubmitted, and the report written once all are done.")
        return
    print(f"\n{result.markdown.read_text()}\nwritten: {result.markdown}, {result.json}, {result.figure} ({result.seconds / 60:.1f} min)")
