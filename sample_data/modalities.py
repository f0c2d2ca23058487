"""Modality-specific IOD attributes for CT, MR, CR and ultrasound instances.

Each ``*_instance`` function adds the modality's image modules (PS3.3 Annex A IODs) to
the common dataset from :func:`sample_data.modules.new_instance`.
"""

from __future__ import annotations

import math

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    CTImageStorage,
    MRImageStorage,
    UltrasoundMultiFrameImageStorage,
)

from .determinism import shift_time
from .modules import Equipment, SeriesInfo, new_instance, set_pixel_data
from .phantom import PADDING, STORED_OFFSET
from .ultrasound import sector_geometry

CT_SCANNER = Equipment("SampleData Medical", "Phantom CT 64", "SD-CT 2.4.1", "CT0451")
MR_SCANNER = Equipment("SampleData Medical", "Phantom MR 3T", "SD-MR 5.1", "MR1187")
CR_READER = Equipment("SampleData Medical", "Phantom CR Reader", "SD-CR 1.9", "CR0093")
US_SCANNER = Equipment("SampleData Medical", "Phantom Echo", "SD-US 3.0", "US2210")

IDENTITY_ORIENTATION = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]


def _origin(rows: int, columns: int, spacing: float, z: float) -> list[float]:
    """Image Position (Patient) of the first pixel centre for an image centred on (0, 0)."""
    return [round(-(columns - 1) / 2.0 * spacing, 4), round(-(rows - 1) / 2.0 * spacing, 4), round(z, 4)]


def ct_instance(
    series: SeriesInfo,
    sop_uid: str,
    index: int,
    z: float,
    pixels: np.ndarray,
    spacing: float,
    thickness: float,
) -> Dataset:
    """A CT Image Storage instance (PS3.3 A.3: CT Image C.8.2.1, Image Plane C.7.6.2)."""
    rows, columns = pixels.shape
    content = shift_time(series.start.date(), series.start.time(), 30.0 + 0.35 * index)
    ds = new_instance(series, CTImageStorage, sop_uid, index + 1, content)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.AcquisitionNumber = 1
    ds.PatientPosition = "HFS"
    ds.ImagePositionPatient = _origin(rows, columns, spacing, z)
    ds.ImageOrientationPatient = IDENTITY_ORIENTATION
    ds.PixelSpacing = [round(spacing, 6), round(spacing, 6)]
    ds.SliceThickness = round(thickness, 4)
    ds.SliceLocation = round(z, 4)
    ds.ReconstructionDiameter = round(spacing * columns, 3)
    _ct_acquisition(ds, z)
    _ct_pixels(ds, pixels)
    return ds


def _ct_acquisition(ds: Dataset, z: float) -> None:
    """CT Image module acquisition attributes (PS3.3 C.8.2.1, C.8.15.3.8) of a helical scan."""
    ds.KVP = 120
    ds.DataCollectionDiameter = 500
    ds.DistanceSourceToDetector = 1040
    ds.DistanceSourceToPatient = 570
    ds.GantryDetectorTilt = 0
    ds.TableHeight = 165
    ds.RotationDirection = "CW"
    tube_current = int(round(180 + 70 * math.sin(z / 90.0) ** 2))  # dose modulation
    ds.ExposureTime = 500
    ds.XRayTubeCurrent = tube_current
    ds.Exposure = int(round(tube_current * 0.5))
    ds.FilterType = "BODY FILTER"
    ds.GeneratorPower = 24
    ds.FocalSpots = 1.2
    ds.ConvolutionKernel = "STANDARD"
    ds.ScanOptions = "HELICAL MODE"
    ds.RevolutionTime = 0.5
    ds.SpiralPitchFactor = 0.984375
    ds.SingleCollimationWidth = 0.625
    ds.TotalCollimationWidth = 40.0
    ds.CTDIvol = round(tube_current * 0.055, 2)


def _ct_pixels(ds: Dataset, pixels: np.ndarray) -> None:
    """Signed 16-bit CT pixels with rescale to HU (C.11.1) and two VOI windows (C.11.2)."""
    set_pixel_data(ds, pixels, "MONOCHROME2", 16)
    ds.add_new(0x00280120, "SS", PADDING)  # Pixel Padding Value
    ds.RescaleIntercept = -STORED_OFFSET
    ds.RescaleSlope = 1
    ds.RescaleType = "HU"
    ds.WindowCenter = [40, -600]
    ds.WindowWidth = [400, 1500]
    ds.WindowCenterWidthExplanation = ["SOFT TISSUE", "LUNG"]


def mr_instance(
    series: SeriesInfo,
    sop_uid: str,
    index: int,
    z: float,
    pixels: np.ndarray,
    spacing: float,
    thickness: float,
    gap: float,
) -> Dataset:
    """An MR Image Storage instance (PS3.3 A.4: MR Image C.8.3.1), T1 spin echo."""
    rows, columns = pixels.shape
    content = shift_time(series.start.date(), series.start.time(), 95.0 + 4.2 * index)
    ds = new_instance(series, MRImageStorage, sop_uid, index + 1, content)
    _mr_acquisition(ds, columns, thickness + gap)
    ds.PatientPosition = "HFS"
    ds.ImagePositionPatient = _origin(rows, columns, spacing, z)
    ds.ImageOrientationPatient = IDENTITY_ORIENTATION
    ds.PixelSpacing = [round(spacing, 6), round(spacing, 6)]
    ds.SliceThickness = round(thickness, 4)
    ds.SliceLocation = round(z, 4)
    set_pixel_data(ds, pixels, "MONOCHROME2", 12)
    ds.WindowCenter = 520
    ds.WindowWidth = 1000
    return ds


def _mr_acquisition(ds: Dataset, columns: int, slice_step: float) -> None:
    """MR Image module acquisition attributes (PS3.3 C.8.3.1) of a 3 T T1 spin echo."""
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
    ds.ScanningSequence = "SE"
    ds.SequenceVariant = ["SK", "SP"]
    ds.ScanOptions = ["SAT1", "FC"]
    ds.MRAcquisitionType = "2D"
    ds.SequenceName = "se2d1"
    ds.AngioFlag = "N"
    ds.RepetitionTime = 550.0
    ds.EchoTime = 12.0
    ds.EchoTrainLength = 1
    ds.NumberOfAverages = 1.0
    ds.ImagingFrequency = 123.256
    ds.ImagedNucleus = "1H"
    ds.EchoNumbers = 1
    ds.MagneticFieldStrength = 3.0
    ds.SpacingBetweenSlices = round(slice_step, 4)
    ds.NumberOfPhaseEncodingSteps = int(columns * 0.8)
    ds.PercentSampling = 100.0
    ds.PercentPhaseFieldOfView = 100.0
    ds.PixelBandwidth = 260.0
    ds.ReceiveCoilName = "Head_32"
    ds.TransmitCoilName = "Body"
    ds.AcquisitionMatrix = [0, columns, int(columns * 0.8), 0]
    ds.InPlanePhaseEncodingDirection = "ROW"
    ds.FlipAngle = 90.0
    ds.SAR = 0.82


def cr_instance(series: SeriesInfo, sop_uid: str, pixels: np.ndarray, pixel_spacing: float) -> Dataset:
    """A CR Image Storage instance (PS3.3 A.2: CR Series C.8.1.1, CR Image C.8.1.2)."""
    content = shift_time(series.start.date(), series.start.time(), 20.0)
    ds = new_instance(series, ComputedRadiographyImageStorage, sop_uid, 1, content)
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.ViewPosition = "PA"
    ds.PatientOrientation = ["L", "F"]
    ds.ImageLaterality = "U"
    ds.KVP = 125
    ds.PlateID = "PL-35x43-0017"
    ds.DistanceSourceToDetector = 1800
    ds.ExposureTime = 12
    ds.XRayTubeCurrent = 320
    ds.Exposure = 4
    ds.Sensitivity = 200.0
    ds.ImagerPixelSpacing = [round(pixel_spacing, 6), round(pixel_spacing, 6)]
    ds.PixelSpacing = [round(pixel_spacing * 1800 / 1950, 6)] * 2
    ds.PixelSpacingCalibrationType = "GEOMETRY"
    ds.PixelSpacingCalibrationDescription = "Magnification at the patient (SID 1800, ODD 150)"
    ds.AcquisitionDeviceProcessingDescription = "CHEST PA"
    set_pixel_data(ds, pixels, "MONOCHROME1", 12)
    ds.WindowCenter = 2048
    ds.WindowWidth = 3600
    ds.LossyImageCompression = "00"
    return ds


def us_instance(series: SeriesInfo, sop_uid: str, frames: np.ndarray, depth_cm: float) -> Dataset:
    """An Ultrasound Multi-frame Image Storage instance (PS3.3 A.7: US Image C.8.5.6, Cine C.7.6.5)."""
    count, rows, columns = frames.shape[:3]
    content = shift_time(series.start.date(), series.start.time(), 40.0)
    ds = new_instance(series, UltrasoundMultiFrameImageStorage, sop_uid, 1, content)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "CARDIAC", "0001"]
    set_pixel_data(ds, frames, "RGB", 8, frames=count)
    ds.FrameIncrementPointer = 0x00181063  # Frame Time
    ds.FrameTime = 33.33
    ds.CineRate = 30
    ds.RecommendedDisplayFrameRate = 30
    ds.HeartRate = int(round(60000 / (count * 33.33)))
    ds.EffectiveDuration = round(count * 0.03333, 4)
    ds.ActualFrameDuration = 33
    ds.StartTrim, ds.StopTrim = 1, count
    ds.TransducerType = "SECTOR_PHASED"
    ds.TransducerData = ["P4-2", "2.5MHz", ""]
    ds.ProcessingFunction = "CARDIAC"
    ds.MechanicalIndex = 1.1
    ds.BoneThermalIndex = 0.4
    ds.SoftTissueThermalIndex = 0.7
    ds.PatientOrientation = ""
    ds.LossyImageCompression = "00"
    ds.SequenceOfUltrasoundRegions = [_us_region(rows, columns, depth_cm)]
    return ds


def _us_region(rows: int, columns: int, depth_cm: float) -> Dataset:
    """One calibrated 2D tissue region (US Region Calibration, PS3.3 C.8.5.5)."""
    geo = sector_geometry(rows, columns)
    cm_per_px = depth_cm / geo.depth_px
    region = Dataset()
    region.RegionSpatialFormat = 1  # 2D
    region.RegionDataType = 1  # tissue
    region.RegionFlags = 0
    region.RegionLocationMinX0 = 0
    region.RegionLocationMinY0 = geo.apex_row
    region.RegionLocationMaxX1 = columns - 1
    region.RegionLocationMaxY1 = geo.apex_row + geo.depth_px
    region.PhysicalUnitsXDirection = 3  # cm
    region.PhysicalUnitsYDirection = 3
    region.PhysicalDeltaX = round(cm_per_px, 6)
    region.PhysicalDeltaY = round(cm_per_px, 6)
    region.ReferencePixelX0 = int(round(geo.apex_column))
    region.ReferencePixelY0 = geo.apex_row
    region.ReferencePixelPhysicalValueX = 0.0
    region.ReferencePixelPhysicalValueY = 0.0
    region.TransducerFrequency = 2500
    return region
