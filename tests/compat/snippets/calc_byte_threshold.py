import remotior_sensus

rs = remotior_sensus.Session(n_processes=2, available_ram=1000)
output = rs.band_calc(
    input_raster_list=["$DATA/s2/S2_B08.tif"],
    output_path="$DATA/out/calc_byte_threshold/bright.tif",
    expression_string='"nir" > 2500',
    input_name_list=["nir"],
    output_datatype="Byte",
    output_nodata=255,
)
print(output.check)
print(output.paths)
rs.close()
