"""Pure functions over records: what the trials mean. No torch, no ultralytics."""
