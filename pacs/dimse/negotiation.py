"""Association negotiation for the acceptor (PS3.8 7.1.1, PS3.7 D.3.3): the A-ASSOCIATE-AC
with the presentation contexts accepted and our User Information items, or an
A-ASSOCIATE-RJ. Presentation contexts and role selection are negotiated by pynetdicom
(``negotiate_as_acceptor``); the PDUs are encoded by pynetdicom too."""

from __future__ import annotations

from dataclasses import dataclass

from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RJ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    AsynchronousOperationsWindowNegotiation,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
)
from pynetdicom.presentation import PresentationContext, negotiate_as_acceptor

from . import pdu


@dataclass(frozen=True, slots=True)
class Context:
    """An accepted presentation context. ``as_scu``: we may send C-STOREs on it (the
    requestor took the SCP role, PS3.7 D.3.3.4)."""

    context_id: int
    abstract_syntax: str
    transfer_syntax: str
    as_scu: bool
    as_scp: bool


def accept(primitive: A_ASSOCIATE, supported: list[PresentationContext],
           max_pdu: int) -> tuple[A_ASSOCIATE_AC, dict[int, Context], int]:
    """The A-ASSOCIATE-AC for a request, the contexts accepted by ID, and the requestor's
    maximum PDU length (0: unlimited)."""
    items = primitive.user_information
    roles = {item.sop_class_uid: (item.scu_role, item.scp_role)
             for item in items if isinstance(item, SCP_SCU_RoleSelectionNegotiation)}
    results, role_replies = negotiate_as_acceptor(primitive.presentation_context_definition_list, supported, roles)
    contexts = {
        context.context_id: Context(context.context_id, str(context.abstract_syntax),
                                    str(context.transfer_syntax[0]), bool(context.as_scu), bool(context.as_scp))
        for context in results if context.result == 0
    }
    peer_max_pdu = next((item.maximum_length_received for item in items
                         if isinstance(item, MaximumLengthNotification)), 0) or 0
    reply = A_ASSOCIATE()
    reply.application_context_name = pdu.APPLICATION_CONTEXT
    reply.calling_ae_title = primitive.calling_ae_title
    reply.called_ae_title = primitive.called_ae_title
    reply.result, reply.result_source = 0x00, 0x01
    reply.presentation_context_definition_results_list = results
    reply.user_information = _user_information(max_pdu, items) + list(role_replies)
    encoded = A_ASSOCIATE_AC()
    encoded.from_primitive(reply)
    return encoded, contexts, peer_max_pdu


def reject(result: int, source: int, reason: int) -> A_ASSOCIATE_RJ:
    """An A-ASSOCIATE-RJ (PS3.8 9.3.4: result, source, reason/diagnostic)."""
    primitive = A_ASSOCIATE()
    primitive.result, primitive.result_source, primitive.diagnostic = result, source, reason
    encoded = A_ASSOCIATE_RJ()
    encoded.from_primitive(primitive)
    return encoded


def _user_information(max_pdu: int, requested: list) -> list:
    """Our User Information items (PS3.7 D.3.3): maximum length, implementation class
    and version; one operation at a time when the requestor proposed a window."""
    max_length = MaximumLengthNotification()
    max_length.maximum_length_received = max_pdu
    implementation = ImplementationClassUIDNotification()
    implementation.implementation_class_uid = pdu.IMPLEMENTATION_CLASS_UID
    version = ImplementationVersionNameNotification()
    version.implementation_version_name = pdu.IMPLEMENTATION_VERSION
    items: list = [max_length, implementation, version]
    if any(isinstance(item, AsynchronousOperationsWindowNegotiation) for item in requested):
        window = AsynchronousOperationsWindowNegotiation()
        window.maximum_number_operations_invoked = 1
        window.maximum_number_operations_performed = 1
        items.append(window)
    return items


def supported_contexts(table: list[tuple[str, list[str], bool, bool]]) -> list[PresentationContext]:
    """pynetdicom contexts for negotiation from (abstract syntax, syntaxes, scu role, scp role)."""
    contexts = []
    for abstract, syntaxes, scu_role, scp_role in table:
        context = PresentationContext()
        context.abstract_syntax = abstract
        context.transfer_syntax = syntaxes
        context.scu_role, context.scp_role = scu_role, scp_role
        contexts.append(context)
    return contexts
