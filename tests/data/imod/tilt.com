# Command file to run Tilt
#
####CreatedVersion#### 4.11.24
#
$tilt -StandardInput
InputProjections TS_01.ali
OutputFile TS_01_full_rec.mrc
IMAGEBINNED 1
TILTFILE TS_01.tlt
THICKNESS 100
RADIAL 0.35 0.035
FalloffIsTrueSigma 1
XAXISTILT 0.0
LOG 0.0
SCALE 0.0 250.0
PERPENDICULAR
MODE 2
FULLIMAGE 8 6
SUBSETSTART 0 0
AdjustOrigin
EXCLUDELIST 1,20-21
ActionIfGPUFails 1,2
$if (-e ./savework) ./savework
