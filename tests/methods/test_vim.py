import math

import pytest
import torch

from featurenorm.config import Config
from featurenorm.errors import UserError
from featurenorm.methods import Outputs, build_method
from featurenorm.methods.vim import ViM, vim_origin

# W = [[1, 0, 0], [0, 1, 0]], b = [1, -2]: pinv(W) = W^T, so u = -W^T b = (-1, 2, 0)
W = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]
B = [1.0, -2.0]
U = torch.tensor([-1.0, 2.0, 0.0], dtype=torch.float64)
# train features f = u + s; second moment of s = diag(18, 8, 2) / 6: principal axes x, then y, then z
SHIFTS = torch.tensor([[3.0, 0, 0], [-3, 0, 0], [0, 2, 0], [0, -2, 0], [0, 0, 1], [0, 0, -1]], dtype=torch.float64)
TRAIN = U + SHIFTS
# train logits = W f + b = s[:2], so max logits are 3, 0, 2, 0, 0, 0: sum 5
QUERIES = U + torch.tensor([[1.0, 0.0, 2.0], [0.0, 0.0, 0.0]], dtype=torch.float64)


def fit(method: ViM, make_head) -> tuple[dict, torch.nn.Linear]:
    head = make_head(W, B)
    return method.fit(TRAIN, torch.zeros(6, dtype=torch.long), head), head


def queries_outputs(head) -> Outputs:
    return Outputs(features=QUERIES, logits=head(QUERIES).detach())


def test_origin_by_hand(make_head):
    assert torch.allclose(vim_origin(make_head(W, B)), U)


def test_two_principal_dims_by_hand(make_head):
    method = build_method("vim", Config(vim_dim=2))
    state, head = fit(method, make_head)
    # residual space = the z axis; train vlogits |s_z| = 0, 0, 0, 0, 1, 1: alpha = 5 / 2
    assert state["null_space"].shape == (3, 1)
    assert state["null_space"][:, 0].abs().tolist() == pytest.approx([0.0, 0.0, 1.0])
    assert state["alpha"].item() == pytest.approx(2.5)
    scores = method.score(queries_outputs(head), head)
    # query 1: logits (1, 0), vlogit 2; query 2: logits (0, 0), vlogit 0
    expected = [math.log(math.e + 1.0) - 2.5 * 2.0, math.log(2.0)]
    assert scores.tolist() == pytest.approx(expected, abs=1e-9)
    # a large residual off the principal subspace (OOD-like) lowers the score
    assert scores[1] > scores[0]


def test_default_dim_follows_the_reference_rule(make_head):
    method = ViM()
    # the ViM authors' benchmark.py: 1000 for D >= 2048, else 512 (D >= 768); below 768, D // 2
    assert [method.resolved_dim(d) for d in (4096, 2048, 2047, 1024, 768)] == [1000, 1000, 512, 512, 512]
    assert [method.resolved_dim(d) for d in (767, 512, 3)] == [383, 256, 1]
    state, head = fit(method, make_head)
    # residual space = the y, z plane; train vlogits 0, 0, 2, 2, 1, 1: alpha = 5 / 6
    assert state["null_space"].shape == (3, 2)
    assert state["alpha"].item() == pytest.approx(5.0 / 6.0)
    scores = method.score(queries_outputs(head), head)
    expected = [math.log(math.e + 1.0) - 5.0 / 6.0 * 2.0, math.log(2.0)]
    assert scores.tolist() == pytest.approx(expected, abs=1e-9)


def test_state_round_trip(make_head):
    state, head = fit(ViM(2), make_head)
    restored = ViM(2)
    restored.load_state(state)
    assert restored.score(queries_outputs(head), head).tolist() == pytest.approx(
        [math.log(math.e + 1.0) - 5.0, math.log(2.0)], abs=1e-9)
    # a state fit with another dimension (a stale cache) is refused, so that it is fit again
    with pytest.raises(ValueError, match="2-d principal subspace, not the 1-d one"):
        ViM(1).load_state(state)


def test_no_residual_space_is_a_user_error(make_head):
    with pytest.raises(UserError, match="vim_dim=3"):
        fit(ViM(3), make_head)
