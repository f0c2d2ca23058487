"""AI engine hooks (docs/ai.md): subscriptions (:mod:`.subscriptions`), notifications from
the event log through the outbox (:mod:`.notify`, DICOM push :mod:`.push`), study-scoped
tokens (:mod:`.tokens`), findings back as SR, FHIR and triage (:mod:`.results`), the REST
routes (:mod:`.web`) and a reference engine (:mod:`.example_engine`)."""
