<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>
<qgis styleCategories="AllStyleCategories" minScale="100000000" maxScale="0" version="3.22.16-Białowieża" hasScaleBasedVisibilityFlag="0">
  <flags>
    <Identifiable>1</Identifiable>
    <Removable>1</Removable>
    <Searchable>1</Searchable>
    <Private>0</Private>
  </flags>
  <elevation zscale="1" zoffset="0"/>
  <renderer maximumScreenErrorUnit="MM" green="Green" red="Red" pointSize="2" pointSizeUnit="Pixel" blue="Blue" pointSizeMapUnitScale="3x:0,0,0,0,0,0" maximumScreenError="0.29999999999999999" pointSymbol="0" type="rgb">
    <redContrastEnhancement>
      <minValue>0</minValue>
      <maxValue>65535</maxValue>
      <algorithm>StretchToMinimumMaximum</algorithm>
    </redContrastEnhancement>
    <greenContrastEnhancement>
      <minValue>0</minValue>
      <maxValue>65535</maxValue>
      <algorithm>StretchToMinimumMaximum</algorithm>
    </greenContrastEnhancement>
    <blueContrastEnhancement>
      <minValue>0</minValue>
      <maxValue>65535</maxValue>
      <algorithm>StretchToMinimumMaximum</algorithm>
    </blueContrastEnhancement>
  </renderer>
  <customproperties>
    <Option/>
  </customproperties>
  <blendMode>0</blendMode>
  <layerOpacity>1</layerOpacity>
</qgis>
