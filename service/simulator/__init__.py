"""In-memory HTTP simulator of the Apikley and Novita providers, for tests and sandboxes."""
