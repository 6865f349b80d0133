"""The attention market: sponsored slots sold by a GSP auction on bid x calibrated pCTR, paced budgets.

Pure computation (campaign schema, auction, calibration, pacing, charges); ``models.market.book`` is the
glue the engine calls, and it reaches Redis only through ``models.store``. Kafka sides: ``streams.market``.
"""
