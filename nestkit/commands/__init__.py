"""One module per CLI command: option parsing and rich rendering; the work lives in the library."""
