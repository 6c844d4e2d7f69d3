"""`splitnn-certs`: a development certificate authority for mutual TLS."""
