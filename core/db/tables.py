"""SQLAlchemy Core handles of every table, defined once.

Core modules and plugins read and write through these (plugins: read-only, by
convention). The SQLModel classes in ``core.db.models`` define the schema.
"""

from core.db import models

PROFILES = models.Profile.__table__
IDENTITIES = models.Identity.__table__
EVENTS = models.EventRow.__table__
API_KEYS = models.ApiKey.__table__
AUDIT = models.AuditLog.__table__
CONSENTS = models.Consent.__table__
SCORES = models.Score.__table__
SEGMENTS = models.SegmentDefinition.__table__
MEMBERSHIPS = models.Membership.__table__
CHANGES = models.MembershipChange.__table__
EVALUATION_STATE = models.EvaluationState.__table__
SEGMENT_RUNS = models.SegmentRun.__table__
SEGMENT_SIZES = models.SegmentSize.__table__
SOURCE_STATES = models.SourceState.__table__
BULK_LOADS = models.BulkLoad.__table__
BULK_LOAD_MOVES = models.BulkLoadMove.__table__
PRODUCTS = models.Product.__table__
MESSAGES = models.Message.__table__
PRODUCT_RELATED = models.ProductRelated.__table__
PRODUCT_POPULARITY = models.ProductPopularity.__table__
RECOMMENDER_RUNS = models.RecommenderRun.__table__
WORKFLOWS = models.WorkflowDefinition.__table__
WORKFLOW_STATES = models.WorkflowState.__table__
WORKFLOW_HISTORY = models.WorkflowHistory.__table__
WORKFLOW_ACTIONS = models.WorkflowAction.__table__
WORKFLOW_TRIGGERS = models.WorkflowTrigger.__table__
SYNC_STATES = models.SyncState.__table__
SYNC_RUNS = models.SyncRun.__table__
SOURCE_ACTIVITY = models.SourceActivity.__table__
INGEST_COUNTS = models.IngestCount.__table__
INGEST_MINIMISED = models.IngestMinimised.__table__
ALERTS = models.MonitorAlert.__table__
SUPPRESSIONS = models.Suppression.__table__
PRIVACY_DELETIONS = models.PrivacyDeletion.__table__
EVENT_COUNTS = models.EventCount.__table__
PRODUCT_COUNTS = models.ProductCount.__table__
CAMPAIGN_OUTCOMES = models.CampaignOutcome.__table__
CAMPAIGN_OUTCOME_MESSAGES = models.CampaignOutcomeMessage.__table__
CAMPAIGN_OUTCOME_RUNS = models.CampaignOutcomeRun.__table__
