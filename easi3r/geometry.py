"""Camera geometry shared by the alignment, the exports and the evaluation (one home per formula).

Conventions: a pose is a ``(..., 4, 4)`` homogeneous rigid transform; ``cam2world`` maps camera to world
coordinates with OpenCV axes (x right, y down, z forward).
"""

from __future__ import annotations

from typing import overload

import numpy as np
import roma
import torch
from torch import Tensor

from ._checks import check_shape

__all__ = ["rigid_inverse"]


@overload
def rigid_inverse(transform: Tensor) -> Tensor: ...
@overload
def rigid_inverse(transform: np.ndarray) -> np.ndarray: ...
def rigid_inverse(transform: Tensor | np.ndarray) -> Tensor | np.ndarray:
    """Inverse of rigid transforms without a general matrix inverse: ``[R | t]^-1 = [R^T | -R^T t]``.

    Args:
        transform: ``(..., 4, 4)`` rigid transforms (tensor or array; the last row is assumed ``[0, 0, 0, 1]``).

    Returns:
        ``(..., 4, 4)`` inverses, of the input's type and dtype (numpy in, numpy out).

    Example:
        >>> import numpy as np
        >>> T = np.eye(4); T[:3, 3] = [1.0, 2.0, 3.0]
        >>> rigid_inverse(T)[:3, 3]
        array([-1., -2., -3.])
    """
    check_shape(transform, "* 4 4", "transform")
    as_numpy = isinstance(transform, np.ndarray)
    x = torch.from_numpy(np.ascontiguousarray(transform)) if as_numpy else transform
    inverse: Tensor = roma.Rigid(x[..., :3, :3], x[..., :3, 3]).inverse().to_homogeneous()
    return inverse.numpy() if as_numpy else inverse
