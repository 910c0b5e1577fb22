"""Planning GPU jobs: peak memory per rank, traced from the real code at real shapes."""
