"""What each agent does with a batch, as plain functions over explicit state and an
:class:`streams.batch.Outbox`: importable and unit-tested without a broker. The agents in
:mod:`streams.app` decode their messages and call these."""
