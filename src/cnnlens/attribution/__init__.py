"""Decision explanation methods behind `explain()`."""
