import math

import pytest
import torch

from featurenorm.config import Config
from featurenorm.errors import UserError
from featurenorm.methods import Outputs, build_method
from featurenorm.methods.knn import KNN, kth_nearest_distance, knn_score

# normalized bank: (1, 0), (0, 1), (-1, 0), (1, 1) / sqrt 2
TRAIN = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [3.0, 3.0]], dtype=torch.float64)


def fitted_knn(k: int, make_head) -> KNN:
    method = build_method("knn", Config(knn_k=k))
    method.fit(TRAIN, torch.zeros(4, dtype=torch.long), make_head([[1.0, 1.0]], [0.0]))
    return method


def test_distance_by_hand(make_head):
    method = fitted_knn(2, make_head)
    assert method.bank[3].tolist() == pytest.approx([1 / math.sqrt(2.0)] * 2)
    features = torch.tensor([[2.0, 0.0], [0.0, -5.0]], dtype=torch.float64)
    scores = method.score(Outputs(features=features), None)
    # query (1, 0): distances 0, sqrt 2, 2, sqrt(2 - sqrt 2) -> 2nd nearest sqrt(2 - sqrt 2)
    # query (0, -1): distances sqrt 2, 2, sqrt 2, sqrt(2 + sqrt 2) -> 2nd nearest sqrt 2
    expected = [-math.sqrt(2 - math.sqrt(2)), -math.sqrt(2)]
    assert scores.tolist() == pytest.approx(expected, abs=1e-7)
    # close to the bank (ID-like) scores higher
    assert scores[0] > scores[1]


def test_k_one_and_k_equal_to_bank_size(make_head):
    features = torch.tensor([[2.0, 0.0], [3.0, 3.0]], dtype=torch.float64)
    # the queries equals a bank row: exactly 0, with no cancellation error from 2 - 2 * similarity
    assert fitted_knn(1, make_head).score(Outputs(features=features), None).tolist() == [0.0, 0.0]
    # farthest of 4: (1, 0) is 2 from (-1, 0); (1, 1)/sqrt 2 is sqrt(2 + sqrt 2) from (-1, 0)
    assert fitted_knn(4, make_head).score(Outputs(features=features), None).tolist() == pytest.approx(
        [-2.0, -math.sqrt(2 + math.sqrt(2))], abs=1e-6)


@pytest.mark.parametrize("chunk_rows", [1, 16, 37, 4096])
def test_chunked_search_equals_brute_force(chunk_rows):
    generator = torch.Generator().manual_seed(0)
    bank = torch.nn.functional.normalize(torch.randn(300, 8, generator=generator, dtype=torch.float64), dim=1)
    features = torch.randn(5, 8, generator=generator, dtype=torch.float64)
    queries = torch.nn.functional.normalize(features, dim=1)
    brute = torch.cdist(queries, bank).sort(dim=1).values[:, 6]
    assert torch.allclose(kth_nearest_distance(queries, bank, 7, chunk_rows), brute, atol=1e-7)
    assert torch.allclose(knn_score(features, bank, 7, chunk_rows), -brute, atol=1e-7)


def test_k_larger_than_bank_is_a_user_error(make_head):
    with pytest.raises(UserError, match="knn_k=5 exceeds the 4"):
        fitted_knn(5, make_head)
