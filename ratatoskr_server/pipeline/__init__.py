"""The request pipeline: ordered stages around one ``Call``, unary and streaming alike."""
