"""The pass log: every per-sample prediction since the last drain, in column chunks.

Each call to :meth:`SampleStats.update_batch` appends one row per sample
(``sample_id, model_age, loss, prediction``); the Experiment drains the rows at
event boundaries and writes them to SQL. Rows live in fixed-size column chunks
so that appending never copies what is already stored (a growing array would
double its memory at every resize), and draining frees the chunks one column at
a time so the peak stays near the log's own size.
"""

from __future__ import annotations

import numpy as np

__all__ = ["PASS_LOG_COLUMNS", "PassLog"]

#: Column names of a drained pass log, in order.
PASS_LOG_COLUMNS: tuple[str, ...] = ("sample_id", "model_age", "loss", "prediction")

_CHUNK_ROWS = 1 << 15  # 32,768 rows = 640 KiB per chunk at 20 bytes a row


class PassLog:
    """Append-only column store of per-sample predictions, drained as numpy arrays.

    Args:
        id_dtype: dtype of the ``sample_id`` column (int32 while ids fit, else int64).

    Row layout (20 bytes with int32 ids): ``sample_id`` (id_dtype), ``model_age``
    (int64), ``loss`` (float32), ``prediction`` (int32).
    """

    def __init__(self, id_dtype: np.dtype | type = np.int32) -> None:
        self._dtypes = {
            "sample_id": np.dtype(id_dtype),
            "model_age": np.dtype(np.int64),
            "loss": np.dtype(np.float32),
            "prediction": np.dtype(np.int32),
        }
        self._full: list[dict[str, np.ndarray]] = []
        self._chunk = self._new_chunk()
        self._fill = 0

    def __len__(self) -> int:
        return len(self._full) * _CHUNK_ROWS + self._fill

    def _new_chunk(self) -> dict[str, np.ndarray]:
        return {name: np.empty(_CHUNK_ROWS, dtype) for name, dtype in self._dtypes.items()}

    def append(self, sample_id: np.ndarray, model_age: int | np.ndarray, loss: np.ndarray,
               prediction: np.ndarray) -> None:
        """Append one row per entry of the (equal-length) arrays; ``model_age`` is one age for all
        rows or an array of one per row."""
        n = len(sample_id)
        per_row = isinstance(model_age, np.ndarray)
        start = 0
        while start < n:
            take = min(n - start, _CHUNK_ROWS - self._fill)
            stop, at = start + take, self._fill
            chunk = self._chunk
            chunk["sample_id"][at : at + take] = sample_id[start:stop]
            chunk["model_age"][at : at + take] = model_age[start:stop] if per_row else model_age
            chunk["loss"][at : at + take] = loss[start:stop]
            chunk["prediction"][at : at + take] = prediction[start:stop]
            self._fill += take
            start = stop
            if self._fill == _CHUNK_ROWS:
                self._full.append(chunk)
                self._chunk = self._new_chunk()
                self._fill = 0

    def drain(self) -> dict[str, np.ndarray]:
        """Return every row appended since the last drain (in append order) and empty the log."""
        full, chunk, fill = self._full, self._chunk, self._fill
        self._full, self._chunk, self._fill = [], self._new_chunk(), 0
        out: dict[str, np.ndarray] = {}
        for name in PASS_LOG_COLUMNS:
            parts = [c.pop(name) for c in full]  # pop: free each column's chunks once copied
            parts.append(chunk.pop(name)[:fill])
            out[name] = np.concatenate(parts)
            del parts
        return out

    def clear(self) -> None:
        """Discard every row not drained yet."""
        self._full, self._chunk, self._fill = [], self._new_chunk(), 0

    def nbytes(self) -> int:
        """Bytes held by the log's chunks (allocated capacity, not only filled rows)."""
        per_row = sum(d.itemsize for d in self._dtypes.values())
        return (len(self._full) + 1) * _CHUNK_ROWS * per_row
