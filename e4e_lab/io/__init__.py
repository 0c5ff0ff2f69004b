"""Files in and out: the input formats (boxes and pairs JSON), the content-keyed tensor
cache, a run's output folder, and where the caches live."""
