"""Fulfilment through partners over HTTP: the protocol, one adapter per partner kind, the
``fulfilment`` job that sends and follows up orders, and partners' callbacks.

A redemption of a partner benefit is created ``pending`` with its points held
(the redemption API). The job then orders it from the partner, outside any
database transaction, and settles it when the partner gives a definite answer:
delivered (``states.fulfilled``) or refused (``states.failed``, which gives the
points and the stock back). No answer, a timeout or a server error proves
nothing, so the job asks again later, and at the redemption's deadline fails
what the partner still cannot confirm. A partner may also report the outcome
by a signed callback; whichever arrives first settles the redemption, and the
other changes nothing.
"""
