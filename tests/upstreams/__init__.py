"""Protocol-faithful HTTP doubles of model providers, served on 127.0.0.1 for the tests."""
