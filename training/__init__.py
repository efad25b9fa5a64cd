# Empty: the package exists so that `training.networks` etc. resolve by these names in pickles.
