"""The trusted tier is narrow: model classes and known reconstructors of the named ML
packages are low; everything else in those packages is judged like any other global."""

from __future__ import annotations

import pytest

from bastion.supplychain.scan.pickle_policy import Kind, classify


@pytest.mark.parametrize(
    "qualified",
    [
        "torch.nn.modules.linear.Linear",
        "torch.optim.adam.Adam",
        "sklearn.tree._tree.Tree",
        "sklearn._loss._loss.__pyx_unpickle_CyHalfMultinomialLoss",
        "pandas.core.indexes.base._new_Index",
        "pandas._libs.internals._unpickle_block",
        "joblib.numpy_pickle.NumpyArrayWrapper",
        "numpy.random._mt19937.MT19937",
    ],
)
def test_model_classes_and_reconstructors_are_trusted(qualified: str) -> None:
    assert classify(qualified).kind is Kind.TRUSTED


@pytest.mark.parametrize(
    "qualified",
    [
        "torch.CompilationUnit",  # torch outside nn/optim is not vouched for
        "torch.utils.data.dataloader.DataLoader",
        "joblib._multiprocessing_helpers.mp.Process",
        "sklearn.utils.some_function",  # functions must be named reconstructors
        "pandas.core.frame.unpickle_anything",  # reconstructor-looking names are not enough
        "scipy.special.spence",
    ],
)
def test_other_names_in_trusted_packages_are_unknown(qualified: str) -> None:
    assert classify(qualified).kind is Kind.UNKNOWN


def test_user_trusted_package_covers_its_functions_too() -> None:
    assert classify("mypkg.models.build").kind is Kind.UNKNOWN
    assert classify("mypkg.models.build", frozenset({"mypkg"})).kind is Kind.TRUSTED


def test_gadgets_win_over_trust() -> None:
    assert classify("torch.fx.GraphModule").kind is Kind.DANGEROUS
    assert classify("mypkg.os.system", frozenset({"mypkg"})).kind is Kind.DANGEROUS
