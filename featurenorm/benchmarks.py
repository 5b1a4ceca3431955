"""The benchmarks: which ID and OOD sets a run scores, as one declarative table.

Like OpenOOD's ``DATA_INFO`` (``openood/evaluation_api/datasets.py``), a benchmark is data, not a
code path: ``BENCHMARKS[name]`` is a :class:`Benchmark` (where the protocol is defined, how images are
resized, where listed images live, the table's metric columns) with one :class:`IdProtocol` per ID
dataset (its OOD sets, or its image lists and OOD groups). :func:`benchmark_entry` flattens the two
into the :class:`BenchmarkEntry` that the data loaders and reports read.

The paper's sets (Yu et al., CVPR 2023, Tables 1-2): six far-OOD sets, then the other CIFAR set as
near-OOD; for MNIST and Fashion-MNIST (not in the paper), each the other's test split. ``imagenet_four`` (Huang & Li, CVPR 2021): ImageNet-1K against iNaturalist, SUN, Places
and Textures. OpenOOD v1.5 (Zhang et al., 2023, arXiv 2306.09301): for CIFAR, near-OOD CIFAR-100/10
and TinyImageNet, far-OOD MNIST, SVHN, Textures and Places365; for ImageNet-1K, near-OOD SSB-hard
and NINCO, far-OOD iNaturalist, Textures and OpenImage-O; all read from OpenOOD's image lists.

Only the standard library and :mod:`featurenorm.errors` are imported here: :mod:`featurenorm.config`
validates the ``benchmark`` key against this table.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .errors import UserError

DEFAULT_BENCHMARK = "paper"
RESIZE_MODES = ("stretch", "shorter_side_crop")
PAPER_FAR_OOD = ("svhn", "textures", "lsun", "lsun-resize", "isun", "places365")


@dataclass(frozen=True)
class IdProtocol:
    """What a benchmark scores for one ID dataset.

    Attributes:
        ood: the OOD set names in report order, each read from the folder its own config key names
            (``svhn``, ``textures``, ...); empty when the sets come from ``groups``' list files.
        lists: ``{"train": list file, "test": list file}`` of the ID images, relative to the root; empty
            when the ID data is our own split.
        groups: ``{group: {OOD set: list file}}`` in report order; empty for an ungrouped benchmark.
        image_dir: overrides the benchmark's ``image_dir`` for this ID dataset.
        image_dirs: ``{OOD set: folder}`` for single sets kept elsewhere (OpenOOD's ImageNet Textures).
    """

    ood: tuple[str, ...] = ()
    lists: dict[str, str] = field(default_factory=dict)
    groups: dict[str, dict[str, str]] = field(default_factory=dict)
    image_dir: str | None = None
    image_dirs: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Benchmark:
    """One OOD protocol.

    Attributes:
        source: where the protocol is defined.
        resize: how every evaluated image is brought to ``image_size``: ``stretch`` (both sides to
            ``image_size``) or ``shorter_side_crop`` (shorter side to ``image_size``, then a center crop, as
            OpenOOD's ``TestStandardPreProcessor`` does).
        table_metrics: the metric columns of the Markdown/CSV tables, in order.
        datasets: ``{ID dataset: IdProtocol}``.
        root_key: the config key naming the folder the list files are relative to; None when every OOD set
            comes from the folder its own config key names.
        root_holds: what that folder holds (for the error when the key is missing).
        image_dir: the folder, under the root, that listed image paths are relative to.
    """

    source: str
    datasets: dict[str, IdProtocol]
    resize: str = "stretch"
    table_metrics: tuple[str, ...] = ("fpr95", "auroc")
    root_key: str | None = None
    root_holds: str = ""
    image_dir: str = ""

    def __post_init__(self):
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"resize '{self.resize}' is not one of {RESIZE_MODES}")


def _openood_cifar(id_name: str, near: str) -> IdProtocol:
    lists = f"benchmark_imglist/{id_name}"
    return IdProtocol(
        lists={"train": f"{lists}/train_{id_name}.txt", "test": f"{lists}/test_{id_name}.txt"},
        groups={
            "near": {near: f"{lists}/test_{near}.txt", "tin": f"{lists}/test_tin.txt"},
            "far": {name: f"{lists}/test_{name}.txt" for name in ("mnist", "svhn", "texture", "places365")},
        },
    )


def _openood_imagenet() -> IdProtocol:
    lists = "benchmark_imglist/imagenet"
    return IdProtocol(
        lists={"train": f"{lists}/train_imagenet.txt", "test": f"{lists}/test_imagenet.txt"},
        groups={
            "near": {name: f"{lists}/test_{name}.txt" for name in ("ssb_hard", "ninco")},
            "far": {name: f"{lists}/test_{name}.txt" for name in ("inaturalist", "textures", "openimage_o")},
        },
        image_dir="images_largescale",
        # OpenOOD keeps ImageNet's images under images_largescale/, but Textures under images_classic/
        image_dirs={"textures": "images_classic"},
    )


BENCHMARKS: dict[str, Benchmark] = {
    "paper": Benchmark(
        source="Yu et al., Block Selection Method for Using Feature Norm in Out-of-distribution "
               "Detection, CVPR 2023, Tables 1-2",
        datasets={
            "cifar10": IdProtocol(ood=(*PAPER_FAR_OOD, "cifar100")),
            "cifar100": IdProtocol(ood=(*PAPER_FAR_OOD, "cifar10")),
            # no paper benchmark: the same far-OOD sets, and either CIFAR set when configured
            "digits": IdProtocol(ood=(*PAPER_FAR_OOD, "cifar10", "cifar100")),
            "imagefolder": IdProtocol(ood=(*PAPER_FAR_OOD, "cifar10", "cifar100")),
            # not in the paper: the standard grayscale pair, each the other's OOD set (its test split)
            "fashion_mnist": IdProtocol(ood=("mnist",)),
            "mnist": IdProtocol(ood=("fashion_mnist",)),
        },
    ),
    "imagenet_four": Benchmark(
        source="Huang & Li, MOS: Towards Scaling Out-of-distribution Detection for Large Semantic Space, "
               "CVPR 2021 (the protocol of Yu et al.'s ImageNet experiments)",
        # resize "stretch": ImageNet models bring resize_size (shorter side, then a center crop)
        datasets={"imagenet": IdProtocol(ood=("inaturalist", "sun", "places", "textures"))},
    ),
    "openood_v1.5": Benchmark(
        source="OpenOOD v1.5 (Zhang et al., arXiv 2306.09301), DATA_INFO in "
               "openood/evaluation_api/datasets.py",
        resize="shorter_side_crop",
        table_metrics=("fpr95_openood", "auroc"),
        datasets={
            "cifar10": _openood_cifar("cifar10", near="cifar100"),
            "cifar100": _openood_cifar("cifar100", near="cifar10"),
            "imagenet": _openood_imagenet(),
        },
        root_key="openood_root",
        root_holds="benchmark_imglist/ and images_classic/",
        image_dir="images_classic",
    ),
}

# Keys of every method's results table besides the OOD sets: the overall average and the groups.
GROUP_NAMES = tuple(dict.fromkeys(group for bench in BENCHMARKS.values() for row in bench.datasets.values()
                                  for group in row.groups))


@dataclass(frozen=True)
class BenchmarkEntry:
    """One row of :data:`BENCHMARKS`: a benchmark for one ID dataset.

    Attributes:
        benchmark: the benchmark's name.
        id_dataset: ``cifar10``, ``cifar100``, ``digits`` or ``imagefolder``.
        ood: OOD set names in report order.
        groups: ``{group: (set, ...)}`` in report order; empty for an ungrouped benchmark.
        ood_lists: ``{set: list file}`` relative to the root; empty when the sets come from folders.
        id_lists: ``{"train": list file, "test": list file}``; empty when the ID data is our own split.
        root_key: the config key naming the root of the list files, or None.
        image_dir: the folder under the root that listed paths are relative to.
        image_dirs: ``{set: folder}`` for OOD sets kept elsewhere (OpenOOD's ImageNet Textures).
        resize: one of :data:`RESIZE_MODES`.
        table_metrics: metric columns of the tables.
    """

    benchmark: str
    id_dataset: str
    ood: tuple[str, ...]
    groups: dict[str, tuple[str, ...]] = field(default_factory=dict)
    ood_lists: dict[str, str] = field(default_factory=dict)
    id_lists: dict[str, str] = field(default_factory=dict)
    root_key: str | None = None
    image_dir: str = ""
    image_dirs: dict[str, str] = field(default_factory=dict)
    resize: str = "stretch"
    table_metrics: tuple[str, ...] = ("fpr95", "auroc")

    def image_dir_of(self, ood_set: str) -> str:
        """The folder under the root that ``ood_set``'s listed paths are relative to."""
        return self.image_dirs.get(ood_set, self.image_dir)


def benchmark_entry(benchmark: str, id_dataset: str) -> BenchmarkEntry:
    """The row of :data:`BENCHMARKS` for ``benchmark`` and ``id_dataset``.

    Raises:
        UserError: an unknown benchmark, or an ID dataset the benchmark does not define (a config
            mistake: the keys ``benchmark`` and ``id_dataset`` do not fit together).
    """
    if benchmark not in BENCHMARKS:
        raise UserError(f"unknown benchmark '{benchmark}'; valid: {', '.join(BENCHMARKS)}")
    bench = BENCHMARKS[benchmark]
    row = bench.datasets.get(id_dataset)
    if row is None:
        fitting = [name for name, other in BENCHMARKS.items() if id_dataset in other.datasets]
        hint = f"set benchmark to {' or '.join(fitting)}" if fitting else "pick another benchmark"
        raise UserError(f"benchmark '{benchmark}' has no ID dataset '{id_dataset}'; it defines "
                        f"{', '.join(bench.datasets)}: set id_dataset to one of them, or {hint}")
    groups = {g: tuple(members) for g, members in row.groups.items()}
    lists = {name: path for members in row.groups.values() for name, path in members.items()}
    return BenchmarkEntry(benchmark=benchmark, id_dataset=id_dataset, ood=row.ood or tuple(lists), groups=groups,
                          ood_lists=lists, id_lists=dict(row.lists), root_key=bench.root_key,
                          image_dir=bench.image_dir if row.image_dir is None else row.image_dir,
                          image_dirs=dict(row.image_dirs), resize=bench.resize,
                          table_metrics=tuple(bench.table_metrics))
