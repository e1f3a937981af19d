"""The review station: operators see each part with its explanation and give verdicts that land in the
results store (:mod:`inspector.station.app`); the line sends images and reads results through its API."""
